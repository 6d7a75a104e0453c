package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// Client-side encryption: with STRATA_ENCRYPTION_KEY_FILE set for every
// service and the CLI, no non-zero 4 KiB block of the source appears
// anywhere in any object the S3 server stores; the backup certifies and
// restores bit-exact; a wrong key or no key fails with a clear error and
// writes nothing.
func TestEncryption(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "strata.key")
	os.WriteFile(key, []byte(strings.Repeat("3f", 32)+"\n"), 0o600)
	st := startStack(t, stackOptions{chunkSize: 64 << 10, env: []string{"STRATA_ENCRYPTION_KEY_FILE=" + key}})
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 24<<20, 17); err != nil {
		t.Fatal(err)
	}
	source, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	blocks := plaintextIndex(source)
	if hits := findBlocks(source, blocks, source); hits == 0 {
		t.Fatal("the block scanner finds nothing in the source itself: it would prove nothing")
	}

	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "secret", "--source", "file://"+img, "--verify", "certify", "--wait"), "\n")[0])
	if rec := st.record("secret", id); rec.Disks[0].Digest == "" {
		t.Fatal("encrypted backup was not certified")
	}
	objects := st.objectFiles("")
	if n := len(st.storedChunks()); n < 10 {
		t.Fatalf("only %d chunks stored", n)
	}
	for _, f := range objects {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if hits := findBlocks(data, blocks, source); hits > 0 {
			t.Fatalf("%d plaintext 4 KiB blocks of the source in object %s", hits, f)
		}
	}
	t.Logf("%d objects, none holds a plaintext block of the source", len(objects))
	// Nor does the bucket name the VM: not in a key (VM names in keys are
	// keyed hashes) and not in an object (record copies are sealed).
	root := filepath.Join(st.s3.Dir, st.bucket)
	records := 0
	for _, f := range objects {
		rel, _ := filepath.Rel(root, f)
		if strings.Contains(rel, "secret") {
			t.Fatalf("object key %s names the VM", rel)
		}
		if strings.HasPrefix(rel, "backups/") {
			records++
		}
		if data, _ := os.ReadFile(f); bytes.Contains(data, []byte("secret")) || bytes.Contains(data, []byte(`"vm"`)) {
			t.Fatalf("object %s holds the VM's name or a plaintext record", rel)
		}
	}
	if records == 0 {
		t.Fatal("no record copy in the bucket")
	}
	st.checkRestore("secret", id, []string{img})
	// With no NATS the record comes from its sealed copy.
	saved := st.env
	st.env = append(append([]string{}, st.env...), "STRATA_NATS_URL=")
	st.checkRestore("secret", id, []string{img})
	st.env = saved
	// --repo names the repository itself: NATS and the configured bucket
	// are both wrong, and ls and restore still work from the copies.
	saved = st.env
	st.env = append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1", "STRATA_S3_BUCKET=no-such-bucket")
	repoURL := "s3://" + st.bucket + "?endpoint=" + st.s3.Endpoint
	var listed []contracts.BackupRecord
	if err := json.Unmarshal([]byte(st.mustCLI("ls", "--repo", repoURL, "--vm", "secret", "--json")), &listed); err != nil || len(listed) != 1 || listed[0].ID != id || listed[0].VM != "secret" {
		t.Fatalf("ls --repo of the encrypted repository: %+v %v", listed, err)
	}
	restored := filepath.Join(dir, "repo.img")
	st.mustCLI("restore", "--repo", repoURL, "--vm", "secret", "--backup", "latest", "--to", restored)
	if got, _ := os.ReadFile(restored); !bytes.Equal(got, source) {
		t.Fatal("restore --repo differs from the backed-up disk")
	}
	if _, errOut, code := st.cli("ls", "--repo", "ftp://elsewhere/x"); code != 2 || !strings.Contains(errOut, "dir:///path or s3://") {
		t.Fatalf("ls --repo with an unknown scheme: exit %d %s", code, errOut)
	}
	st.env = saved

	// Wrong key and no key: refused before anything is written.
	wrong := filepath.Join(dir, "wrong.key")
	os.WriteFile(wrong, []byte(strings.Repeat("40", 32)), 0o600)
	for _, tc := range []struct{ env, want string }{
		{"STRATA_ENCRYPTION_KEY_FILE=" + wrong, "wrong encryption key"},
		{"STRATA_ENCRYPTION_KEY_FILE=", "is encrypted"},
	} {
		saved := st.env
		st.env = append(append([]string{}, st.env...), tc.env)
		out := filepath.Join(dir, "wrong.img")
		_, errOut, code := st.cli("restore", "--vm", "secret", "--backup", id, "--to", out)
		st.env = saved
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("restore with %s: exit %d, %s", tc.env, code, errOut)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("restore with %s wrote %s", tc.env, out)
		}
		if _, err := os.Stat(out + ".partial"); err == nil {
			t.Fatalf("restore with %s left a partial file", tc.env)
		}
	}
	if after := st.objectFiles(""); len(after) != len(objects) {
		t.Fatalf("objects changed from %d to %d after refused commands", len(objects), len(after))
	}

	// A copy of the encrypted repository is encrypted with the same key,
	// written from the stored bytes (the copier never writes plaintext):
	// no object of it holds a plaintext block, and it restores bit-exact
	// with the key alone.
	copyDir := filepath.Join(dir, "site2")
	st.mustCLI("copy", "--vm", "secret", "--to", "dir://"+copyDir)
	copied := 0
	filepath.Walk(copyDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		copied++
		data, _ := os.ReadFile(p)
		if hits := findBlocks(data, blocks, source); hits > 0 {
			t.Fatalf("%d plaintext 4 KiB blocks of the source in the copy's %s", hits, p)
		}
		if bytes.Contains(data, []byte("secret")) {
			t.Fatalf("the copy's %s names the VM", p)
		}
		return nil
	})
	if copied < 4 {
		t.Fatalf("the copy holds %d objects", copied)
	}
	fromCopy := filepath.Join(dir, "copy.img")
	st.cliEnv(append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1"), "restore", "--repo", "dir://"+copyDir, "--vm", "secret", "--backup", id, "--to", fromCopy)
	if got, _ := os.ReadFile(fromCopy); !bytes.Equal(got, source) {
		t.Fatal("restore from the encrypted copy differs from the backed-up disk")
	}

	// verify --repo reads every chunk back in the CLI itself, no services
	// (and NATS wrong): good, then a byte flipped in a pack is found and
	// the backup named.
	st.env = append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1")
	verifyRepo := func() (string, string, int) {
		return st.cli("verify", "--repo", repoURL, "--vm", "secret", "--backup", "latest", "--mode", "chunks", "--json")
	}
	if out, errOut, code := verifyRepo(); code != 0 || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("verify --repo: exit %d %s %s", code, out, errOut)
	}
	packs := st.objectFiles("packs")
	if len(packs) == 0 {
		t.Fatal("no pack stored")
	}
	b, _ := os.ReadFile(packs[0])
	b[100] ^= 0x01
	os.WriteFile(packs[0], b, 0o644)
	if out, _, code := verifyRepo(); code != 1 || !strings.Contains(out, "bad chunks") || !strings.Contains(out, id) {
		t.Fatalf("verify --repo of a flipped pack byte: exit %d %s", code, out)
	}
}

// plaintextIndex maps the first 8 bytes of every non-zero 4 KiB block of
// the source to the blocks' offsets.
func plaintextIndex(source []byte) map[uint64][]int {
	idx := map[uint64][]int{}
	for off := 0; off+4096 <= len(source); off += 4096 {
		if !chunk.AllZero(source[off : off+4096]) {
			k := binary.LittleEndian.Uint64(source[off:])
			if len(idx[k]) < 64 { // a block repeated more often adds nothing
				idx[k] = append(idx[k], off)
			}
		}
	}
	return idx
}

// findBlocks counts the offsets of data where a whole source block starts.
func findBlocks(data []byte, idx map[uint64][]int, source []byte) int {
	hits := 0
	for i := 0; i+4096 <= len(data); i++ {
		for _, off := range idx[binary.LittleEndian.Uint64(data[i:])] {
			if bytes.Equal(data[i:i+4096], source[off:off+4096]) {
				hits++
				break
			}
		}
	}
	return hits
}
