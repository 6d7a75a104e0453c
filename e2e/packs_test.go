package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// Garbage collection in a packed repository: two backups of one VM with
// different disks, the older pruned; a collection deletes the packs only
// it referenced (a dry run first changes nothing), keeps every pack a
// remaining manifest names, and the remaining backup restores bit-exact.
// Dedup's index still names the chunks of the deleted packs: a backup of
// the old disk by another VM must store them again, not point at packs
// that are gone — it verifies and restores bit-exact.
func TestPackedGarbageCollection(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_PACKS=true"}})
	dir := t.TempDir()
	disk := func(name string, seed uint64) (path, src string) {
		path = filepath.Join(dir, name)
		if err := demodisk.Write(path, 24<<20, seed); err != nil {
			t.Fatal(err)
		}
		return path, "file://" + path
	}
	backup := func(vm, src string) contracts.BackupRecord {
		t.Helper()
		out := st.mustCLI("backup", "--vm", vm, "--source", src, "--wait")
		rec := st.record(vm, strings.TrimSpace(strings.Split(out, "\n")[0]))
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup of %s: %s %s", vm, rec.State, rec.Error)
		}
		return rec
	}
	oldImg, oldSrc := disk("old.img", 71)
	newImg, newSrc := disk("new.img", 72)
	backup("web", oldSrc)
	packsOfOld := len(st.objectFiles("packs"))
	kept := backup("web", newSrc)
	st.mustCLI("prune", "--vm", "web", "--keep-last", "1", "--yes")
	all := len(st.objectFiles("packs"))

	// The packs the remaining backup's manifest names.
	named := map[string]bool{}
	b, err := os.ReadFile(filepath.Join(st.s3.Dir, st.bucket, kept.Disks[0].Manifest))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Data() {
		if l := r.Loc; l.InPack() {
			named[l.Pack.String()] = true
		}
	}

	var dry, gc contracts.GCReply
	json.Unmarshal([]byte(st.mustCLI("gc", "--dry-run", "--grace", "0s", "--json")), &dry)
	if !dry.DryRun || dry.Packs != all || dry.PacksDeleted == 0 || len(st.objectFiles("packs")) != all {
		t.Fatalf("gc dry run: %+v; %d packs (%d of the pruned backup)", dry, all, packsOfOld)
	}
	json.Unmarshal([]byte(st.mustCLI("gc", "--grace", "0s", "--json")), &gc)
	left := st.objectFiles("packs")
	if gc.PacksDeleted != dry.PacksDeleted || len(left) != all-gc.PacksDeleted || gc.PacksDeleted > packsOfOld {
		t.Fatalf("gc: %+v; %d packs before, %d after, the pruned backup stored %d", gc, all, len(left), packsOfOld)
	}
	leftSet := map[string]bool{}
	for _, f := range left {
		leftSet[filepath.Base(f)] = true
	}
	for p := range named {
		if !leftSet[p] {
			t.Fatalf("gc deleted pack %s the remaining backup references", p)
		}
	}
	t.Logf("gc: %d packs → %d (freed %d bytes)", all, len(left), gc.FreedBytes)
	st.checkRestore("web", kept.ID, []string{newImg})

	again := backup("db", oldSrc)
	if again.Disks[0].UploadedChunks == 0 {
		t.Fatal("a backup of the pruned disk stored nothing: it points at deleted packs")
	}
	st.checkRestore("db", again.ID, []string{oldImg})
	var health contracts.CheckReply
	if err := json.Unmarshal([]byte(st.mustCLI("check", "--json")), &health); err != nil || !health.Healthy {
		t.Fatalf("check after collecting packs: %+v %v", health, err)
	}
}
