package diskcheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
)

// The XFS log check agrees with xfs_logprint (xfsprogs' own reader) on
// logs the kernel wrote: fresh from mkfs, unmounted cleanly, frozen
// (xfs_freeze, the state a filesystem-consistent snapshot holds), shut
// down mid-work (a crash), and the same after the log has gone round
// its ring many times (small log, many transactions).
func TestXFSLogState(t *testing.T) {
	need := func(err error, what string) {
		t.Helper()
		if err == nil {
			return
		}
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s: %v", what, err)
		}
		t.Skipf("%s: %v", what, err)
	}
	for _, tool := range []string{"mkfs.xfs", "xfs_logprint", "xfs_io", "xfs_freeze"} {
		_, err := lookPath(tool)
		need(err, tool+" (apt-get install xfsprogs)")
	}
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		p, _ := lookPath(name)
		out, err := exec.Command(p, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	const partOff = 1 << 20
	// image makes a GPT disk with one XFS partition; work, given, mounts
	// it (loop), runs, and leaves the log as work leaves it.
	image := func(name string, logSize string, work func(mnt string)) string {
		img := filepath.Join(dir, name+".img")
		os.WriteFile(img, nil, 0o644)
		os.Truncate(img, 340<<20)
		sfdisk, _ := lookPath("sfdisk")
		cmd := exec.Command(sfdisk, "--quiet", img)
		cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, type=linux\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v\n%s", err, out)
		}
		part := filepath.Join(dir, name+".xfs")
		os.WriteFile(part, nil, 0o644)
		os.Truncate(part, 320<<20)
		// fstests' variables let mkfs.xfs make a log under 64 MiB.
		mk, _ := lookPath("mkfs.xfs")
		cmd = exec.Command(mk, "-q", "-l", "size="+logSize, part)
		cmd.Env = append(os.Environ(), "TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mkfs.xfs: %v\n%s", err, out)
		}
		if work != nil {
			mnt := filepath.Join(dir, name+".mnt")
			os.Mkdir(mnt, 0o755)
			out, err := exec.Command("mount", "-o", "loop", part, mnt).CombinedOutput()
			need(err, "mount an XFS image on a loop device: "+string(out))
			work(mnt)
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Fatalf("umount: %v\n%s", err, out)
			}
		}
		b, _ := os.ReadFile(part)
		f, _ := os.OpenFile(img, os.O_WRONLY, 0)
		f.WriteAt(b, partOff)
		f.Close()
		return part
	}
	files := func(mnt string, n int) {
		for i := 0; i < n; i++ {
			os.WriteFile(filepath.Join(mnt, fmt.Sprintf("f%d", i)), []byte("x"), 0o644)
			if i%3 == 0 {
				os.Remove(filepath.Join(mnt, fmt.Sprintf("f%d", i-1)))
			}
		}
	}
	var frozenCopy string
	cases := map[string]func(string){
		"fresh": nil,
		"clean": func(mnt string) { files(mnt, 500) },
		"crash": func(mnt string) {
			files(mnt, 500)
			exec.Command("sync").Run()
			files(mnt, 50)
			run("xfs_io", "-x", "-c", "shutdown", mnt)
		},
		"frozen": func(mnt string) {
			files(mnt, 500)
			run("xfs_freeze", "-f", mnt)
			defer run("xfs_freeze", "-u", mnt)
			// The image as a snapshot taken while frozen sees it.
			src, _ := os.ReadFile(filepath.Join(dir, "frozen.xfs"))
			frozenCopy = filepath.Join(dir, "frozen-copy.xfs")
			os.WriteFile(frozenCopy, src, 0o644)
			files(mnt, 0)
		},
		"wrapped-crash": func(mnt string) {
			files(mnt, 20000)
			exec.Command("sync").Run()
			files(mnt, 10)
			run("xfs_io", "-x", "-c", "shutdown", mnt)
		},
		"wrapped-clean": func(mnt string) { files(mnt, 20000) },
	}
	for _, name := range []string{"fresh", "clean", "crash", "frozen", "wrapped-crash", "wrapped-clean"} {
		logSize := "64m"
		if strings.HasPrefix(name, "wrapped") {
			logSize = "6m" // near the smallest: many laps
		}
		part := image(name, logSize, cases[name])
		check := map[string]string{name: part}
		if name == "frozen" {
			check = map[string]string{"frozen (snapshot while frozen)": frozenCopy}
		}
		for label, p := range check {
			lp := run("xfs_logprint", "-t", p)
			if !strings.Contains(lp, "<DIRTY>") && !strings.Contains(lp, "<CLEAN>") {
				t.Fatalf("%s: xfs_logprint says neither clean nor dirty:\n%.600s", label, lp)
			}
			// Work to replay: a dirty log holding more than the
			// superblock-only transactions a freeze covers the log with.
			want := strings.Contains(lp, "<DIRTY>") && strings.Count(lp, "LOG REC AT LSN") != strings.Count(lp, "SUPER Block Buffer")
			f, _ := os.Open(p)
			fi, _ := f.Stat()
			got, err := xfsLogDirty(f, Partition{Index: 1, Start: 0, Size: fi.Size(), Content: "xfs"})
			f.Close()
			if err != nil || got != want {
				t.Fatalf("%s: work to replay %v (%v), xfs_logprint says %v:\n%.3000s", label, got, err, want, lp)
			}
			if label == "wrapped-crash" && !strings.Contains(lp, "LSN cycle 2") && !strings.Contains(lp, "LSN cycle 3") {
				t.Fatalf("the small log did not go round its ring:\n%.2000s", lp)
			}
			if label == "frozen (snapshot while frozen)" && got {
				t.Fatal("a log frozen by xfs_freeze was judged to need recovery")
			}
			t.Logf("%s: work to replay %v, as xfs_logprint says: %s", label, got, strings.SplitN(lp[strings.Index(lp, "log tail"):], "\n", 2)[0])
		}
	}
}

var lookPath = testserver.LookTool
