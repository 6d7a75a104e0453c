package testserver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Libvirtd is a libvirt daemon a test started itself, without systemd:
// Debian's libvirtd in session mode on its own socket and directories,
// so nothing of the machine's system daemon or its domains is touched.
// Run by root, it runs as nobody (a session daemon of root would be the
// system one); its QEMU guests use TCG, no /dev/kvm needed.
type Libvirtd struct {
	Dir     string // its home: configuration, state, runtime, and the test's images
	Socket  string
	Scratch string // for STRATA_LIBVIRT_SCRATCH_DIR
	uid     int
	proc    *Process
	t       testing.TB
}

// StartLibvirtd starts a libvirt daemon for the test.
func StartLibvirtd(t testing.TB) *Libvirtd {
	t.Helper()
	for _, tool := range []string{"libvirtd", "virsh", "qemu-system-x86_64", "qemu-img"} {
		if _, err := lookTool(tool); err != nil {
			msg := tool + " not found (apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils)"
			if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	// Not under t.TempDir(): its parents are private to root, and the
	// daemon runs as nobody.
	dir, err := os.MkdirTemp("", "strata-libvirt-")
	if err != nil {
		t.Fatal(err)
	}
	l := &Libvirtd{Dir: dir, Socket: filepath.Join(dir, "run", "libvirt", "libvirt-sock"), Scratch: filepath.Join(dir, "scratch"), uid: os.Getuid(), t: t}
	if l.uid == 0 {
		l.uid = 65534
	}
	for _, d := range []string{"home", "run", "config/libvirt", "cache", "scratch", "images"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	// QEMU's output to files, not to virtlogd (which would need its own
	// daemon).
	os.WriteFile(filepath.Join(dir, "config", "libvirt", "qemu.conf"), []byte("stdio_handler = \"file\"\n"), 0o644)
	l.chown(dir)
	t.Cleanup(func() {
		// Cleanups run last-registered first: the daemon's own process
		// may be gone by now, so its guests are also found by their
		// command lines, which name this directory.
		for _, name := range l.domains() {
			l.virsh("destroy", name)
			l.virsh("undefine", name, "--checkpoints-metadata")
		}
		l.Stop()
		killUnder(dir)
		os.RemoveAll(dir)
	})
	l.Start()
	return l
}

// killUnder kills every process whose command line names dir (a test
// daemon's QEMU guests, qemu-nbd exports in its scratch directory).
func killUnder(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (l *Libvirtd) chown(root string) {
	filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, l.uid, l.uid)
		}
		return nil
	})
}

// Start starts the daemon (again, after Stop: its domains keep running and
// it finds them, their checkpoints too).
func (l *Libvirtd) Start() {
	l.t.Helper()
	bin, _ := lookTool("libvirtd")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(l.Dir, "home"), "XDG_RUNTIME_DIR="+filepath.Join(l.Dir, "run"),
		"XDG_CONFIG_HOME="+filepath.Join(l.Dir, "config"), "XDG_CACHE_HOME="+filepath.Join(l.Dir, "cache"))
	if os.Getuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(l.uid), Gid: uint32(l.uid)}}
	}
	os.Remove(l.Socket)
	l.proc = Start(l.t, "libvirtd", cmd)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := l.virsh("version"); err == nil {
			return
		}
		if time.Now().After(deadline) || l.proc.Cmd.ProcessState != nil {
			l.t.Fatalf("libvirtd did not come up on %s:\n%s", l.Socket, tail(l.proc.Output(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the daemon (SIGTERM, as a service manager would); its
// domains keep running.
func (l *Libvirtd) Stop() {
	if l.proc == nil || l.proc.Cmd.ProcessState != nil {
		return
	}
	l.proc.Cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { l.proc.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		l.proc.Stop()
	}
}

// URI is the daemon's connection URI for virsh.
func (l *Libvirtd) URI() string { return "qemu:///session?socket=" + l.Socket }

// Source is the Strata source URL of a domain of this daemon.
func (l *Libvirtd) Source(domain string) string {
	return "libvirt+unix:///session/" + domain + "?socket=" + l.Socket
}

func (l *Libvirtd) virsh(args ...string) (string, error) {
	bin, _ := lookTool("virsh")
	out, err := exec.Command(bin, append([]string{"-q", "-c", l.URI()}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Log is what QEMU printed for a domain (its log file).
func (l *Libvirtd) Log(domain string) string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "cache", "libvirt", "qemu", "log", domain+".log"))
	return string(b)
}

// VirshErr runs virsh on the daemon: its output, and its error.
func (l *Libvirtd) VirshErr(args ...string) (string, error) { return l.virsh(args...) }

// Virsh runs virsh on the daemon or fails the test.
func (l *Libvirtd) Virsh(args ...string) string {
	l.t.Helper()
	out, err := l.virsh(args...)
	if err != nil {
		l.t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (l *Libvirtd) domains() []string {
	out, _ := l.virsh("list", "--all", "--name")
	return strings.Fields(out)
}

// Checkpoints lists a domain's checkpoints by name.
func (l *Libvirtd) Checkpoints(domain string) []string {
	l.t.Helper()
	return strings.Fields(l.Virsh("checkpoint-list", domain, "--name"))
}

// JobRunning reports whether the domain runs a job (a backup).
func (l *Libvirtd) JobRunning(domain string) bool {
	l.t.Helper()
	out, err := l.virsh("domjobinfo", domain)
	if err != nil && strings.Contains(out, "not running") {
		return false // a shut-off domain runs no job
	}
	if err != nil {
		l.t.Fatalf("virsh domjobinfo %s: %v\n%s", domain, err, out)
	}
	return !strings.Contains(out, "None")
}

// Domain defines and starts a domain with one qcow2 disk per raw image
// (converted into the daemon's image directory, vda, vdb, …), no OS: the
// guest sits in its firmware. It returns the qcow2 paths.
func (l *Libvirtd) Domain(name string, raws ...string) []string {
	l.t.Helper()
	var disks strings.Builder
	var images []string
	for i, raw := range raws {
		img := filepath.Join(l.Dir, "images", fmt.Sprintf("%s-%d.qcow2", name, i))
		Qemu(l.t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
		os.Chown(img, l.uid, l.uid)
		images = append(images, img)
		fmt.Fprintf(&disks, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vd%c' bus='virtio'/></disk>\n", img, 'a'+i)
	}
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    %s
  </devices>
</domain>`, name, disks.String())
	def := filepath.Join(l.Dir, name+".xml")
	os.WriteFile(def, []byte(xml), 0o644)
	l.Virsh("define", def)
	l.Virsh("start", name)
	return images
}

// Write writes n bytes of pattern p at off into disk index i (vda = 0) of
// the running domain, through QEMU's own block layer (HMP qemu-io), and
// flushes.
func (l *Libvirtd) Write(domain string, i int, p byte, off, n int64) {
	l.t.Helper()
	dev := fmt.Sprintf("/machine/peripheral/virtio-disk%d/virtio-backend", i)
	for _, cmd := range []string{fmt.Sprintf("write -P %d %d %d", p, off, n), "flush"} {
		if out := l.Virsh("qemu-monitor-command", "--hmp", domain, fmt.Sprintf("qemu-io -d %s %q", dev, cmd)); out != "" {
			l.t.Fatalf("qemu-io %s %q: %s", dev, cmd, out)
		}
	}
}
