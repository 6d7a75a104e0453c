package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// Garbage on every subject the services consume is dead-lettered with a
// reason and the services keep working; corrupted manifests and chunks make
// restore fail naming the object, never write wrong bytes.
func TestBadInputIsRefusedAndNothingBreaks(t *testing.T) {
	st := startStack(t, stackOptions{})
	js := st.jetstream()
	ctx := ctxT(t, 2*time.Minute)

	garbage := map[string][]byte{
		contracts.SubjectBackupRequested:                  []byte("{not json"),
		contracts.SubjectTrigger:                          []byte(`{"schema":1,"vm":"x","source":"ftp://nope"}`),
		contracts.SubjectSegmentPrefix + "junk.0.0":       []byte("\x00\x01\x02"),
		contracts.SubjectSegmentDonePrefix + "junk.0.0":   []byte(`{"schema":99}`),
		contracts.SubjectBackupCommitted:                  []byte(`[]`),
		contracts.SubjectBackupVerified:                   []byte(`{"schema":1,"backup_id":"a","vm":"v","state":"bogus"}`),
		contracts.SubjectBackupFailed:                     []byte(`{"schema":1,"backup_id":"a","vm":"v","state":"failed"}`),
		contracts.SubjectSegmentPrefix + "ghost.0.0":      []byte(`{"schema":1,"backup_id":"ghost","vm":"v","disk":0,"index":0,"source":"file:///etc/hostname","disk_size":10,"chunk_size":1048576,"first_chunk":0,"chunks":1}`),
		contracts.SubjectSegmentDonePrefix + "ghost2.0.0": []byte(`{"schema":1,"backup_id":"ghost2","vm":"v","disk":0,"index":0,"first_chunk":0,"ids":[""]}`),
	}
	for subject, data := range garbage {
		if _, err := js.Publish(ctx, subject, data); err != nil {
			t.Fatalf("publish to %s: %v", subject, err)
		}
	}
	nc, _ := nats.Connect(st.nats)
	defer nc.Close()
	for _, subject := range []string{contracts.SubjectDedupMissing, contracts.SubjectSchedulerRun} {
		resp, err := nc.Request(subject, []byte("garbage"), 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		if resp.Header.Get(micro.ErrorCodeHeader) != "400" {
			t.Fatalf("garbage request to %s answered %q, want a 400 error", subject, resp.Header.Get(micro.ErrorCodeHeader))
		}
	}

	dlq, err := js.Stream(ctx, contracts.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	for subject := range garbage {
		var reason string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if m, err := dlq.GetLastMsgForSubject(ctx, contracts.SubjectDLQPrefix+subject); err == nil {
				reason = m.Header.Get(contracts.HeaderDLQReason)
				break
			}
		}
		if reason == "" {
			t.Errorf("nothing dead-lettered with a reason for %s", subject)
			continue
		}
		t.Logf("%s → dead-lettered: %s", subject, reason)
	}

	// The services still work.
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 96<<20, 3); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "app", "--source", "file://"+img, "--wait"), "\n")[0])
	good := filepath.Join(dir, "good.img")
	st.mustCLI("restore", "--vm", "app", "--backup", id, "--to", good)
	if sha256File(t, img) != sha256File(t, good) {
		t.Fatal("restore after bad input differs")
	}

	// An existing target is refused before anything is written; --force
	// replaces it; a directory target gets DIR/<vm>-<disk>.img.
	os.WriteFile(good, []byte("precious"), 0o644)
	if _, errOut, code := st.cli("restore", "--vm", "app", "--backup", id, "--to", good); code != 2 || !strings.Contains(errOut, "exists") {
		t.Fatalf("restore over an existing file: exit %d, %q", code, errOut)
	}
	if b, _ := os.ReadFile(good); string(b) != "precious" {
		t.Fatal("refused restore changed the existing file")
	}
	if _, err := os.Stat(good + ".partial"); err == nil {
		t.Fatal("refused restore wrote a partial file")
	}
	st.mustCLI("restore", "--vm", "app", "--backup", id, "--to", good, "--force")
	if sha256File(t, img) != sha256File(t, good) {
		t.Fatal("forced restore differs")
	}
	into := t.TempDir()
	st.mustCLI("restore", "--vm", "app", "--backup", id, "--to", into)
	rec := st.record("app", id)
	if sha256File(t, img) != sha256File(t, filepath.Join(into, "app-"+rec.Disks[0].Name+".img")) {
		t.Fatal("restore into a directory differs")
	}
	if _, errOut, code := st.cli("restore", "--vm", "app", "--backup", id, "--to", into); code != 2 || !strings.Contains(errOut, "exists") {
		t.Fatalf("second restore into the same directory: exit %d, %q", code, errOut)
	}

	// An unknown VM's backup fails cleanly with a reason.
	_, errOut, code := st.cli("backup", "--vm", "ghost-vm", "--source", "file:///no/such/disk.img", "--wait")
	if code == 0 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("backup of a missing source: exit %d, %q", code, errOut)
	}

	// A corrupted manifest: restore fails naming it and writes nothing.
	manKey := "manifests/app/0/" + id
	restoreFailsNaming(t, st, id, filepath.Join(st.s3.Dir, st.bucket, manKey), manKey, flipByte)

	// A corrupted and a truncated chunk: the same, whatever object holds
	// them (their own or a pack); the error names that object.
	stored := st.storedChunks()
	var ids []string
	for id := range stored {
		ids = append(ids, id)
	}
	if len(ids) < 2 {
		t.Fatalf("only %d chunks stored", len(ids))
	}
	slices.Sort(ids)
	for i, damage := range []func(*testing.T, string){flipByteAt(stored[ids[0]]), truncateAt(stored[ids[1]])} {
		c := stored[ids[i]]
		restoreFailsNaming(t, st, id, c.File, c.Key, damage)
	}
}

// flipByteAt damages the middle of a chunk's stored bytes.
func flipByteAt(c storedChunk) func(*testing.T, string) {
	return func(t *testing.T, _ string) { c.flip(t, c.Len/2, 0x04) }
}

// truncateAt cuts the chunk's object in the middle of the chunk.
func truncateAt(c storedChunk) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		if err := os.Truncate(path, c.Off+c.Len/2); err != nil {
			t.Fatal(err)
		}
	}
}

func flipByte(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x04
	os.WriteFile(path, b, 0o644)
}

// restoreFailsNaming damages one stored object, checks that restore
// refuses with an error naming it and leaves no image, then repairs it.
func restoreFailsNaming(t *testing.T, st *stack, id, path, key string, damage func(*testing.T, string)) {
	t.Helper()
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("object file for %s: %v", key, err)
	}
	damage(t, path)
	defer os.WriteFile(path, orig, 0o644)
	to := filepath.Join(t.TempDir(), "bad.img")
	_, errOut, code := st.cli("restore", "--vm", "app", "--backup", id, "--to", to)
	if code == 0 {
		t.Fatalf("restore succeeded with %s damaged", key)
	}
	if !strings.Contains(errOut, key) {
		t.Fatalf("restore error does not name %s: %s", key, errOut)
	}
	for _, p := range []string{to, to + ".partial"} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists after a failed restore", p)
		}
	}
	t.Logf("damaged %s → %s", key, strings.TrimSpace(errOut))
}
