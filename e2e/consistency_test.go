package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// Application-consistent backups of a real guest with a real agent: a
// libvirt domain running Debian's kernel and Debian's qemu-guest-agent,
// a writer appending to a file on its ext4 all along.
//   - filesystem (the default): the record says so with a frozen window
//     under a second, the agent's log shows the freeze then the thaw, the
//     restored ext4 needs no journal recovery (e2fsck -n clean, no
//     needs_recovery); a crash-mode backup is reported for comparison;
//   - hooks: a pre-freeze hook (guest-exec) writes a marker that the
//     backup's filesystem holds (strata files cat) and a post-thaw hook
//     removes it from the live guest; host hooks from STRATA_HOOKS_DIR see
//     the backup's id; every run is in the record;
//   - an agent stopped with SIGSTOP, and a freeze that hangs (the agent
//     stops itself in its fsfreeze hook): preferred falls back to crash
//     with the reason, required fails with it, and the guest ends thawed
//     with its writer going;
//   - the snapshotter killed while its freeze is under way: the next
//     snapshotter thaws the guest by the freeze's thaw-by.
func TestConsistentBackupOfARealGuest(t *testing.T) {
	kernel := testserver.DebianKernel(t)
	lv := testserver.StartLibvirtd(t)
	work := t.TempDir()
	const partStart, partSize = 1 << 20, 60 << 20
	raw := filepath.Join(work, "disk.raw")
	os.WriteFile(raw, make([]byte, 64<<20), 0o644)
	testserver.Tool(t, "label: gpt\nstart=2048, type=linux\n", "sfdisk", "--quiet", raw)
	testserver.Tool(t, "", "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", partStart), raw, fmt.Sprintf("%dk", partSize>>10))
	const dom = "strata-agent"
	g, _ := lv.AgentGuest(dom, kernel, raw)

	// A host hook: records its arguments and the backup it ran for.
	hooksDir := filepath.Join(work, "hooks")
	os.MkdirAll(hooksDir, 0o755)
	stamps := filepath.Join(work, "stamps")
	os.WriteFile(filepath.Join(hooksDir, "stamp"), []byte("#!/bin/sh\necho \"$1 $STRATA_VM $STRATA_BACKUP_ID\" >> "+stamps+"\necho stamped $1\n"), 0o755)
	const freezeMax = 5 * time.Second
	st := startStack(t, stackOptions{chunkSize: 64 << 10,
		env:      []string{"STRATA_LIBVIRT_SCRATCH_DIR=" + lv.Scratch, "STRATA_FREEZE_MAX=" + freezeMax.String()},
		extraEnv: map[string][]string{"snapshotter": {"STRATA_HOOKS_DIR=" + hooksDir}}})
	src := lv.Source(dom)
	g.WaitWriting(20 * time.Second)

	backup := func(args ...string) contracts.BackupRecord {
		t.Helper()
		out := st.mustCLI(append([]string{"backup", "--vm", dom, "--source", src, "--wait"}, args...)...)
		rec := st.record(dom, strings.TrimSpace(strings.Split(out, "\n")[0]))
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup %s %v: %s %s", rec.ID, args, rec.State, rec.Error)
		}
		return rec
	}
	// restoredExt4 restores a backup and checks its ext4 with e2fsprogs:
	// whether e2fsck -n finds it clean, and whether it needs recovery.
	restoredExt4 := func(rec contracts.BackupRecord) (clean bool, recovery bool, report string) {
		t.Helper()
		img := filepath.Join(work, "restore-"+rec.ID+".img")
		st.mustCLI("restore", "--vm", dom, "--backup", rec.ID, "--to", img)
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		part := filepath.Join(work, "part-"+rec.ID+".ext4")
		os.WriteFile(part, b[partStart:partStart+partSize], 0o644)
		fsck, err := exec.Command("/usr/sbin/e2fsck", "-fn", part).CombinedOutput()
		dump, _ := exec.Command("/usr/sbin/dumpe2fs", "-h", part).CombinedOutput()
		recovery = bytes.Contains(dump, []byte("needs_recovery"))
		return err == nil, recovery, string(fsck)
	}
	thawed := func(within time.Duration, after string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			out, err := g.Agent(`{"execute":"guest-fsfreeze-status"}`)
			if err == nil && strings.Contains(out, "thawed") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the guest is not thawed after %v: %s %v\n%s", after, within, out, err, g.ConsoleTail(2000))
			}
			time.Sleep(200 * time.Millisecond)
		}
		g.WaitWriting(20 * time.Second)
	}

	// Filesystem-consistent (the default): frozen for well under a
	// second, the agent logs the freeze then the thaw, and the restored
	// ext4 needs no recovery.
	g.AgentLog()
	fs := backup()
	if fs.Consistency != "filesystem" || fs.FrozenMillis <= 0 || fs.FrozenMillis >= 1000 {
		t.Fatalf("filesystem backup: consistency %q (%s), frozen %d ms", fs.Consistency, fs.ConsistencyWhy, fs.FrozenMillis)
	}
	log := g.AgentLog()
	freeze, thaw := strings.Index(log, "disabling logging due to filesystem freeze"), strings.Index(log, "logging re-enabled due to filesystem unfreeze")
	if freeze < 0 || thaw < freeze {
		t.Fatalf("the agent's log does not show a freeze then a thaw:\n%s", log)
	}
	if clean, recovery, report := restoredExt4(fs); !clean || recovery {
		t.Fatalf("the filesystem-consistent backup's ext4: clean %v, needs recovery %v\n%s", clean, recovery, report)
	}
	thawed(5*time.Second, "after the filesystem backup")
	t.Logf("filesystem-consistent: frozen %d ms; restored ext4 clean without recovery", fs.FrozenMillis)

	// Crash-consistent, for comparison (reported, not asserted).
	crash := backup("--consistency", "crash")
	if crash.Consistency != "crash" || crash.FrozenMillis != 0 {
		t.Fatalf("crash backup: %q, frozen %d ms", crash.Consistency, crash.FrozenMillis)
	}
	clean, recovery, _ := restoredExt4(crash)
	t.Logf("crash-consistent: restored ext4 e2fsck -n clean %v, needs journal recovery %v", clean, recovery)

	// Hooks: the marker the pre-freeze hook writes is in the backup, the
	// post-thaw hook has removed it from the live guest.
	app := backup("--consistency", "application",
		"--pre-freeze", "sh -c 'echo flushed-by-the-pre-freeze-hook > /data/marker'",
		"--post-thaw", "rm /data/marker",
		"--pre-freeze-host", "stamp pre", "--post-thaw-host", "stamp post")
	if app.Consistency != "application" || app.ConsistencyWhy != "" {
		t.Fatalf("application backup: %q (%s)", app.Consistency, app.ConsistencyWhy)
	}
	var ran []string
	for _, h := range app.Hooks {
		if h.Exit != 0 || h.Error != "" {
			t.Fatalf("hook %+v failed", h)
		}
		ran = append(ran, fmt.Sprintf("%s %v %s", h.Phase, h.Host, h.Command))
	}
	if want := []string{"pre-freeze false sh -c 'echo flushed-by-the-pre-freeze-hook > /data/marker'", "pre-freeze true stamp pre",
		"post-thaw false rm /data/marker", "post-thaw true stamp post"}; strings.Join(ran, "|") != strings.Join(want, "|") {
		t.Fatalf("hooks in the record:\n%s\nwant\n%s", strings.Join(ran, "\n"), strings.Join(want, "\n"))
	}
	if app.Hooks[1].Output != "stamped pre\n" {
		t.Fatalf("the host hook's output in the record: %q", app.Hooks[1].Output)
	}
	if got := st.mustCLI("files", "cat", "--vm", dom, "--backup", app.ID, "/p1/marker"); got != "flushed-by-the-pre-freeze-hook\n" {
		t.Fatalf("the backup's /data/marker: %q", got)
	}
	if out := g.Run("ls /data/marker"); !strings.Contains(out, "No such file") {
		t.Fatalf("the live guest still has the marker: %s", out)
	}
	if b, _ := os.ReadFile(stamps); string(b) != fmt.Sprintf("pre %s %s\npost %s %s\n", dom, app.ID, dom, app.ID) {
		t.Fatalf("the host hook's stamps: %q", b)
	}
	// A failing pre-freeze hook counts as a failed freeze.
	failed := backup("--pre-freeze", "sh -c 'echo database busy; exit 7'")
	if failed.Consistency != "crash" || !strings.Contains(failed.ConsistencyWhy, "exit status 7") || failed.Hooks[0].Output != "database busy\n" {
		t.Fatalf("a failing pre-freeze hook: %q (%s), hooks %+v", failed.Consistency, failed.ConsistencyWhy, failed.Hooks)
	}
	thawed(5*time.Second, "after the hooks")

	// An agent that does not answer (stopped with SIGSTOP).
	g.Run("kill -STOP $(pidof qemu-ga)")
	fell := backup()
	if fell.Consistency != "crash" || !strings.Contains(fell.ConsistencyWhy, "did not answer") {
		t.Fatalf("a stopped agent, preferred: %q (%s)", fell.Consistency, fell.ConsistencyWhy)
	}
	if out, errOut, code := st.cli("backup", "--vm", dom, "--source", src, "--require-consistency", "--wait"); code != 1 || !strings.Contains(out+errOut, "did not answer") {
		t.Fatalf("a stopped agent, required: exit %d\n%s%s", code, out, errOut)
	}
	g.WaitWriting(10 * time.Second)
	g.Run("kill -CONT $(pidof qemu-ga)")
	thawed(30*time.Second, "after the agent was stopped")

	// A freeze that hangs: the agent stops itself in its fsfreeze hook,
	// and carries the freeze out when it is continued, after Strata gave
	// up: the freeze record stays until a thaw succeeds.
	for _, required := range []bool{false, true} {
		g.Run("touch /run/stop-at-freeze")
		args := []string{"backup", "--vm", dom, "--source", src, "--wait"}
		if required {
			args = append(args, "--require-consistency")
		}
		out, errOut, code := st.cli(args...)
		switch {
		case required && (code != 1 || !strings.Contains(out+errOut, "freeze failed")):
			t.Fatalf("a hung freeze, required: exit %d\n%s%s", code, out, errOut)
		case !required && code != 0:
			t.Fatalf("a hung freeze, preferred: exit %d\n%s%s", code, out, errOut)
		case !required:
			rec := st.record(dom, strings.TrimSpace(strings.Split(out, "\n")[0]))
			if rec.Consistency != "crash" || !strings.Contains(rec.ConsistencyWhy, "freeze failed") {
				t.Fatalf("a hung freeze, preferred: %q (%s)", rec.Consistency, rec.ConsistencyWhy)
			}
		}
		g.WaitWriting(10 * time.Second) // the agent stopped before freezing anything
		g.Run("rm /run/stop-at-freeze; kill -CONT $(pidof qemu-ga)")
		thawed(freezeMax+30*time.Second, fmt.Sprintf("after a hung freeze (required %v)", required))
	}
	st.mustCLI("rm", "--vm", dom, "--failed")

	// The snapshotter killed while its freeze is under way (the agent's
	// hook makes the freeze take 3 s): the guest freezes after its
	// snapshotter died, and the next snapshotter thaws it by thaw-by.
	g.Run("echo 3 > /run/slow-freeze")
	kv, err := st.jetstream().KeyValue(context.Background(), contracts.BucketFreezes)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.cli("backup", "--vm", dom, "--source", src)
	}()
	var f contracts.Freeze
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if e, err := kv.Get(context.Background(), contracts.FreezeKey(dom)); err == nil {
			if err := contracts.Decode(e.Value(), &f); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no freeze was recorded")
		}
	}
	snaps := st.procs["snapshotter"]
	snaps[len(snaps)-1].Stop() // SIGKILL
	g.Run("rm /run/slow-freeze")
	next := st.startService("snapshotter", "STRATA_HOOKS_DIR="+hooksDir)
	sawFrozen := false
	for deadline := f.ThawBy.Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, err := g.Agent(`{"execute":"guest-fsfreeze-status"}`)
		if err == nil && strings.Contains(out, "frozen") {
			sawFrozen = true
		}
		if err == nil && strings.Contains(out, "thawed") && sawFrozen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest frozen by a killed snapshotter: frozen seen %v, not thawed by %v + 5 s: %s %v", sawFrozen, f.ThawBy, out, err)
		}
	}
	if !strings.Contains(next.Output(), "thawed a guest left frozen") {
		t.Fatalf("the next snapshotter does not say it thawed the guest:\n%s", next.Output())
	}
	g.WaitWriting(20 * time.Second)
	<-done
}
