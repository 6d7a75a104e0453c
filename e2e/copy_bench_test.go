package e2e

import (
	"bufio"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// BenchmarkCopy (`make bench`): a 1 GiB backup copied between two S3
// server processes (versitygw) by strata copy: MB/s of stored bytes moved,
// and the objects it took.
func BenchmarkCopy(b *testing.B) {
	st := startStack(b, stackOptions{env: []string{"STRATA_PACKS=true"}})
	site2 := testserver.Versity(b)
	img := filepath.Join(b.TempDir(), "disk.img")
	if err := demodisk.Write(img, 1<<30, 7); err != nil {
		b.Fatal(err)
	}
	st.mustCLI("backup", "--vm", "big", "--source", "file://"+img, "--wait")
	env := append(append([]string{}, st.env...), "STRATA_COPY_S3_ACCESS_KEY="+site2.AccessKey, "STRATA_COPY_S3_SECRET_KEY="+site2.SecretKey)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		to := "s3://site2/copy" + string(rune('a'+i)) + "?endpoint=" + site2.Endpoint
		var reply copyReply
		if err := json.Unmarshal([]byte(st.cliEnv(env, "copy", "--all", "--to", to, "--json")), &reply); err != nil || len(reply.Copied) != 1 {
			b.Fatalf("copy: %+v %v", reply, err)
		}
		b.ReportMetric(reply.MBPerSec, "copy_MB/s")
		b.ReportMetric(float64(reply.Objects), "objects")
	}
}

// BenchmarkLockExtension (`make bench`): what Object Lock costs a backup
// in retention requests. A 256 MiB disk under a lock of 20 s in steps of
// 5 s: a backup right after the first needs no extension (the packs'
// dates cover it); one after the packs' dates passed extends each pack
// it references once; the next, in the same generation, none.
func BenchmarkLockExtension(b *testing.B) {
	st := startStack(b, stackOptions{chunkSize: 256 << 10, versioned: true, env: []string{
		"STRATA_PACKS=true", "STRATA_S3_OBJECT_LOCK=compliance", "STRATA_LOCK_DAYS=20s", "STRATA_LOCK_STEP=5s"}})
	img := filepath.Join(b.TempDir(), "disk.img")
	if err := demodisk.Write(img, 256<<20, 9); err != nil {
		b.Fatal(err)
	}
	backup := func() (objects, extended float64) {
		f, _ := os.OpenFile(img, os.O_WRONLY, 0)
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(rand.Uint32())
		}
		f.WriteAt(buf, int64(rand.IntN(255))<<20)
		f.Close()
		st.mustCLI("backup", "--vm", "locked", "--source", "file://"+img, "--wait")
		// The merge service logs what covering the backup took.
		sc := bufio.NewScanner(strings.NewReader(st.procs["merge"][0].Output()))
		for sc.Scan() {
			var l struct {
				Msg      string  `json:"msg"`
				Objects  float64 `json:"objects"`
				Extended float64 `json:"extended"`
			}
			if json.Unmarshal([]byte(sc.Text()), &l) == nil && l.Msg == "locks cover the backup" {
				objects, extended = l.Objects, l.Extended
			}
		}
		return objects, extended
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		backup()
		o1, e1 := backup()
		time.Sleep(27 * time.Second) // past every date the first backups set
		o2, e2 := backup()
		_, e3 := backup()
		b.ReportMetric(o1, "objects_covered")
		b.ReportMetric(e1, "extensions_same_generation")
		b.ReportMetric(o2, "objects_covered_after_expiry")
		b.ReportMetric(e2, "extensions_after_expiry")
		b.ReportMetric(e3, "extensions_next_backup")
	}
}
