package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// A chain of 25 backups from a QEMU dirty bitmap with key interval 10:
// backups 11 and 21 are full re-reads, every point restores bit-exact;
// prune to keep-last 5 (dry run first) removes the rest, metadata only,
// and the remaining 5 still restore bit-exact.
func TestChainOf25KeyIntervalAndPrune(t *testing.T) {
	// The collection at the end runs in 16 shards (STRATA_GC_SHARDS): the
	// exact count below holds shard by shard.
	st := startStack(t, stackOptions{extraEnv: map[string][]string{"snapshotter": {"STRATA_KEY_INTERVAL=10"}, "dedup": {"STRATA_GC_SHARDS=16"}}})
	dir := t.TempDir()
	_, qcow := qcowWithBitmap(t, dir, "base", 8<<20, 31)

	type point struct {
		rec contracts.BackupRecord
		raw string
	}
	var points []point
	for i := 0; i < 25; i++ {
		if i > 0 {
			testserver.Qemu(t, "qemu-io", "-f", "qcow2",
				"-c", fmt.Sprintf("write -P %d %d 65536", i, (i*3%8)<<20),
				"-c", fmt.Sprintf("write -P %d %d 4096", 255-i, (i*5%8)<<20+12288), qcow)
		}
		copyRaw := filepath.Join(dir, fmt.Sprintf("point%02d.raw", i))
		testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, copyRaw)
		addr, nbdProc := testserver.QemuNBD(t, qcow, "qcow2", "b1")
		out := st.mustCLI("backup", "--vm", "chain", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
		nbdProc.Stop()
		rec := st.record("chain", strings.TrimSpace(strings.Split(out, "\n")[0]))
		points = append(points, point{rec, copyRaw})
		wantFull := i%10 == 0
		if (rec.Kind == contracts.KindFull) != wantFull {
			t.Fatalf("backup %d is %s (%s), want full=%v", i+1, rec.Kind, rec.FullReason, wantFull)
		}
		if !wantFull && rec.Parent != points[i-1].rec.ID {
			t.Fatalf("backup %d has parent %s, want %s", i+1, rec.Parent, points[i-1].rec.ID)
		}
	}
	restoreAll := func(ps []point) {
		for _, p := range ps {
			out := filepath.Join(dir, "restore.img")
			st.mustCLI("restore", "--vm", "chain", "--backup", p.rec.ID, "--to", out, "--force")
			if sha256File(t, out) != sha256File(t, p.raw) {
				t.Fatalf("restore of %s (%s) differs from its point", p.rec.ID, p.rec.Kind)
			}
		}
	}
	restoreAll(points)

	var dry contracts.PruneReply
	json.Unmarshal([]byte(st.mustCLI("prune", "--vm", "chain", "--keep-last", "5", "--json")), &dry)
	if !dry.DryRun || len(dry.Pruned) != 20 || len(st.records("chain")) != 25 {
		t.Fatalf("dry run: %+v; %d backups listed", dry, len(st.records("chain")))
	}
	var done contracts.PruneReply
	json.Unmarshal([]byte(st.mustCLI("prune", "--vm", "chain", "--keep-last", "5", "--yes", "--json")), &done)
	if done.DryRun || len(done.Pruned) != 20 {
		t.Fatalf("prune: %+v", done)
	}
	if n := len(st.records("chain")); n != 5 {
		t.Fatalf("%d backups listed after prune, want 5", n)
	}
	if n := len(st.objectFiles("manifests")); n != 5 {
		t.Fatalf("%d manifest objects after prune, want 5", n)
	}
	restoreAll(points[20:])

	// A merge killed at each step of pruning leaves every other backup
	// restorable, and a rerun finishes the job.
	remaining := points[20:]
	for i, step := range []string{"manifests", "record", "catalog"} {
		keep := len(remaining) - 1
		old := st.procs["merge"][len(st.procs["merge"])-1]
		old.Stop()
		crashing := st.startBinary("merge", "strata-merge-crashing", []string{step})
		st.waitReady(crashing)
		if _, _, code := st.cli("prune", "--vm", "chain", "--keep-last", fmt.Sprint(keep), "--yes", "--timeout", "5s"); code == 0 {
			t.Fatalf("prune with a merge crashing at %q succeeded", step)
		}
		crashing.Cmd.Wait()
		restoreAll(remaining[1:])
		st.waitReady(st.startService("merge"))
		var rerun contracts.PruneReply
		json.Unmarshal([]byte(st.mustCLI("prune", "--vm", "chain", "--keep-last", fmt.Sprint(keep), "--yes", "--json")), &rerun)
		remaining = remaining[1:]
		if n := len(st.records("chain")); n != keep {
			t.Fatalf("after the rerun of a prune crashed at %q: %d backups, want %d", step, n, keep)
		}
		if n := len(st.objectFiles("manifests")); n != keep {
			t.Fatalf("after the rerun of a prune crashed at %q: %d manifests, want %d", step, n, keep)
		}
		restoreAll(remaining)
		t.Logf("crash at prune step %d (%s): others restorable, rerun finished", i+1, step)
	}

	// Garbage collection deletes exactly the chunks no remaining backup
	// references: a dry run first, then for real.
	want := map[string]bool{}
	for _, p := range remaining {
		ids, _ := chunkCensus(t, p.raw, chunkSize)
		for id := range ids {
			want[id] = true
		}
	}
	// Whatever the layout: an object (a loose chunk or a pack) is deleted
	// exactly when it holds no referenced chunk — a pack partly referenced
	// is kept whole.
	before := st.storedChunks()
	objects, dead := map[string]bool{}, map[string]bool{}
	for _, c := range before {
		objects[c.Key], dead[c.Key] = true, true
	}
	for id := range want {
		c, ok := before[id]
		if !ok {
			t.Fatalf("referenced chunk %s is not stored", id)
		}
		delete(dead, c.Key)
	}
	var dryGC, gc contracts.GCReply
	json.Unmarshal([]byte(st.mustCLI("gc", "--dry-run", "--grace", "0s", "--json")), &dryGC)
	if !dryGC.DryRun || dryGC.Deleted+dryGC.PacksDeleted != len(dead) || len(st.storedChunks()) != len(before) {
		t.Fatalf("gc dry run: %+v; %d objects, %d hold no referenced chunk", dryGC, len(objects), len(dead))
	}
	json.Unmarshal([]byte(st.mustCLI("gc", "--grace", "0s", "--json")), &gc)
	left := st.storedChunks()
	if n := gc.Deleted + gc.PacksDeleted; n != len(dead) {
		t.Fatalf("gc deleted %d of %d objects (%+v); %d hold no referenced chunk", n, len(objects), gc, len(dead))
	}
	for id := range want {
		if _, ok := left[id]; !ok {
			t.Fatalf("gc deleted referenced chunk %s", id)
		}
	}
	for id, c := range left {
		if dead[c.Key] {
			t.Fatalf("gc left %s (chunk %s), which holds no referenced chunk", c.Key, id)
		}
	}
	t.Logf("gc: %d objects → %d, %d chunks → %d (freed %d bytes)", len(objects), len(objects)-len(dead), len(before), len(left), gc.FreedBytes)
	restoreAll(remaining)
}
