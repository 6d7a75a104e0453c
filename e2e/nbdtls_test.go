package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// A backup through an NBD export that crosses hosts: qemu-nbd with TLS
// required and client certificates checked (tls-creds-x509,
// verify-peer=on). nbds:// reaches it — planning, transfer and the
// verifier's source reads all inside TLS — and restores bit-exact; the
// plain nbd:// URL is refused with the server's "TLS required", never
// read in the clear.
func TestBackupThroughTLSNBDExport(t *testing.T) {
	certs := testserver.X509Dir(t)
	st := startStack(t, stackOptions{env: []string{
		"STRATA_NBD_CA_FILE=" + filepath.Join(certs, "ca-cert.pem"),
		"STRATA_NBD_CERT_FILE=" + filepath.Join(certs, "client-cert.pem"),
		"STRATA_NBD_KEY_FILE=" + filepath.Join(certs, "client-key.pem"),
		"STRATA_VERIFY_MODE=certify", // the verifier re-reads the source too
	}})
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if err := demodisk.Write(raw, 64<<20, 21); err != nil {
		t.Fatal(err)
	}
	addr, _ := testserver.QemuNBDTLS(t, raw, "raw", certs)

	out, errOut, code := st.cli("backup", "--vm", "tls-vm", "--source", "nbd://"+addr+"/disk", "--wait")
	if code == 0 || !strings.Contains(out+errOut, "requires TLS") {
		t.Fatalf("a plain nbd:// backup of a TLS export: exit %d\n%s%s", code, out, errOut)
	}
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "tls-vm", "--source", "nbds://"+addr+"/disk", "--wait"), "\n")[0])
	rec := st.record("tls-vm", id)
	if rec.State != contracts.StateVerified || rec.Verify != contracts.VerifyCertify {
		t.Fatalf("nbds backup: %s (%s) %s", rec.State, rec.Verify, rec.Error)
	}
	restored := filepath.Join(dir, "restored.img")
	st.mustCLI("restore", "--vm", "tls-vm", "--backup", id, "--to", restored)
	if sha256File(t, restored) != sha256File(t, raw) {
		t.Fatal("restore of the TLS NBD backup differs from the disk")
	}
}
