package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// A standby mirror (OneDiff): a raw file kept at each of 5 points of a
// qcow2 + dirty-bitmap chain by the merge service, each update writing
// only the changed chunks (bytes written reported and checked) and the
// file equal to qemu-img convert of that point; the target modified
// behind Strata's back is refused (the mirror stays at its point) until
// strata mirror reseed; then a writable qemu-nbd export as the target.
func TestMirror(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_PACKS=true"}})
	dir := t.TempDir()
	_, qcow := qcowWithBitmap(t, dir, "point0", 32<<20, 44)
	target := filepath.Join(dir, "standby.raw")
	st.mustCLI("mirror", "set", "--vm", "one", "--to", "file://"+target)

	mirrorOf := func() contracts.Mirror {
		t.Helper()
		var ms []contracts.Mirror
		if err := json.Unmarshal([]byte(st.mustCLI("mirror", "ls", "--json")), &ms); err != nil || len(ms) != 1 {
			t.Fatalf("mirror ls: %+v %v", ms, err)
		}
		return ms[0]
	}
	waitPoint := func(id string) contracts.Mirror {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			m := mirrorOf()
			if m.Point == id || m.Error != "" {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("mirror did not reach %s: %+v", id, m)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var nbdProc *testserver.Process
	var addr string
	point := func(i int, writes int) (contracts.BackupRecord, string) {
		t.Helper()
		if nbdProc != nil {
			nbdProc.Stop()
		}
		var cmds []string
		for w := 0; w < writes; w++ {
			cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", 10*i+w+1, int64(w)*(1<<20)+int64(i)*cs*3, cs))
		}
		if len(cmds) > 0 {
			testserver.Qemu(t, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, qcow)...)...)
		}
		raw := filepath.Join(dir, fmt.Sprintf("point%d.raw", i))
		testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw)
		addr, nbdProc = testserver.QemuNBD(t, qcow, "qcow2", "b1")
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "one", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait"), "\n")[0])
		return st.record("one", id), raw
	}
	for i := 0; i < 5; i++ {
		writes := 3 + i
		if i == 0 {
			writes = 0
		}
		rec, raw := point(i, writes)
		m := waitPoint(rec.ID)
		if m.Point != rec.ID || m.Error != "" {
			t.Fatalf("point %d: mirror %+v", i, m)
		}
		if sha256File(t, target) != sha256File(t, raw) {
			t.Fatalf("point %d: the mirror differs from qemu-img convert of the point", i)
		}
		if i > 0 && (m.ChunksWritten != int64(writes) || m.BytesWritten != int64(writes)*cs) {
			t.Fatalf("point %d: the update wrote %d chunks (%d bytes), %d changed", i, m.ChunksWritten, m.BytesWritten, writes)
		}
		t.Logf("point %d (%s): %d chunks written, %s check", i, rec.Kind, m.ChunksWritten, m.Check)
	}
	held := mirrorOf().Point

	// Behind Strata's back: the next update is refused, the mirror stays.
	f, _ := os.OpenFile(target, os.O_WRONLY, 0)
	f.WriteAt([]byte("tampered"), 100)
	f.Close()
	rec, raw := point(5, 2)
	deadline := time.Now().Add(60 * time.Second)
	m := mirrorOf()
	for !m.NeedsReseed && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		m = mirrorOf()
	}
	if !m.NeedsReseed || m.Point != held || !strings.Contains(m.Error, "behind") {
		t.Fatalf("a tampered target: %+v", m)
	}
	if _, errOut, code := st.cli("mirror", "sync", "--vm", "one"); code == 0 || !strings.Contains(errOut, "reseed") {
		t.Fatalf("mirror sync of a tampered target: exit %d %s", code, errOut)
	}
	var reseeded contracts.Mirror
	json.Unmarshal([]byte(st.mustCLI("mirror", "reseed", "--vm", "one", "--json")), &reseeded)
	if reseeded.Point != rec.ID || reseeded.NeedsReseed || sha256File(t, target) != sha256File(t, raw) {
		t.Fatalf("reseed: %+v", reseeded)
	}
	if reseeded.ChunksWritten != 3 { // the tampered chunk and the two changed
		t.Fatalf("reseed wrote %d chunks, want 3", reseeded.ChunksWritten)
	}

	// A writable qemu-nbd export as the target, certified.
	nbdImg := filepath.Join(dir, "standby-nbd.qcow2")
	testserver.Qemu(t, "qemu-img", "create", "-f", "qcow2", nbdImg, "32M")
	nbdAddr, nbdTarget := testserver.QemuNBDWritable(t, nbdImg, "qcow2")
	st.mustCLI("mirror", "set", "--vm", "one", "--to", "nbd://"+nbdAddr+"/disk", "--certify")
	var seeded contracts.Mirror
	json.Unmarshal([]byte(st.mustCLI("mirror", "sync", "--vm", "one", "--json")), &seeded)
	if seeded.Point != rec.ID || seeded.Check != "certified" {
		t.Fatalf("nbd mirror: %+v", seeded)
	}
	rec2, raw2 := point(6, 4)
	if m := waitPoint(rec2.ID); m.ChunksWritten != 4 || m.Error != "" {
		t.Fatalf("nbd mirror update: %+v", m)
	}
	nbdTarget.Stop()
	out := filepath.Join(dir, "nbd.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", nbdImg, out)
	if sha256File(t, out) != sha256File(t, raw2) {
		t.Fatal("the NBD mirror differs from its point")
	}
}
