package testserver

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Guest is a running libvirt domain with a real Linux inside: Debian's
// kernel, busybox as its userland, and Debian's qemu-guest-agent (the
// host's /usr/sbin/qemu-ga with the libraries it links, copied into the
// initramfs) on the domain's org.qemu.guest_agent.0 virtio-serial
// channel, logging to the guest's /run/qemu-ga.log (AgentLog). Its disk vda is a GPT disk whose first partition, ext4, is
// mounted on /data, where a writer appends a line every 50 ms for as long
// as the guest runs (printing its count on the console every 20 lines:
// a frozen filesystem stops the count).
//
// A second channel is the test's own: Run executes a shell command in
// the guest without the agent, so a test can stop the agent (SIGSTOP) and
// start it again. qemu-ga runs with an fsfreeze hook that announces each
// freeze and thaw on the console, stops the agent itself at a freeze
// while /run/stop-at-freeze exists (a freeze that hangs), and sleeps
// /run/slow-freeze's seconds before a freeze when that exists.
type Guest struct {
	Name    string
	Console string // the serial console's file: kernel, agent log, writer, Run output
	lv      *Libvirtd
	ctl     net.Conn
	mu      sync.Mutex
	runs    int
}

// guestInit is the guest's /init (busybox sh).
const guestInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /run /data /tmp /var/run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
for m in $(cat /modules/order); do insmod /modules/$m; done
port() {
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "$1" ] && echo /dev/${p##*/}
  done
}
i=0
while [ ! -b /dev/vda1 ] || [ -z "$(port org.qemu.guest_agent.0)" ] || [ -z "$(port org.strata.ctl.0)" ]; do
  i=$((i+1)); [ $i -gt 300 ] && echo STRATA-GUEST-NO-DEVICES && poweroff -f
  sleep 0.1
done
mount -t ext4 /dev/vda1 /data || { echo STRATA-GUEST-MOUNT-FAILED; poweroff -f; }
qemu-ga -m virtio-serial -p $(port org.qemu.guest_agent.0) -l /run/qemu-ga.log -v -f /run/qemu-ga.pid -t /run -F/etc/qemu/fsfreeze-hook &
ctl=$(port org.strata.ctl.0)
(
  while true; do
    while read -r line; do sh -c "$line"; done < $ctl
    sleep 0.2
  done
) &
(
  n=0
  while true; do
    n=$((n+1))
    echo "line $n" >> /data/writes.log
    [ $((n % 20)) -eq 0 ] && echo "STRATA-WRITER $n"
    sleep 0.05
  done
) &
echo STRATA-GUEST-READY
while true; do sleep 3600; done
`

// guestHook is qemu-ga's fsfreeze hook.
const guestHook = `#!/bin/sh
echo "STRATA-FSFREEZE-HOOK $1" > /dev/ttyS0
if [ "$1" = freeze ]; then
  [ -e /run/slow-freeze ] && sleep "$(cat /run/slow-freeze)"
  [ -e /run/stop-at-freeze ] && kill -STOP $PPID
fi
exit 0
`

// AgentGuest defines and starts the guest named name on disk (a raw image:
// GPT, ext4 on its first partition; converted to qcow2 in the daemon's
// image directory) and waits until its agent answers. It returns the
// guest and its qcow2 image.
func (l *Libvirtd) AgentGuest(name string, kernel Kernel, disk string) (*Guest, string) {
	l.t.Helper()
	t := l.t
	qemuGA, err := lookTool("qemu-ga")
	if err != nil {
		l.fail("qemu-ga not found (apt-get install qemu-guest-agent)")
	}
	// Debian's busybox-static: the guest has no libraries for another.
	busybox := "/bin/busybox"
	if out, err := exec.Command("ldd", busybox).CombinedOutput(); err == nil || !strings.Contains(string(out), "not a dynamic executable") {
		l.fail(fmt.Sprintf("%s is not a static busybox (apt-get install busybox-static): %s", busybox, out))
	}
	files := []InitramfsFile{
		{Name: "bin/busybox", Mode: 0o755, Data: mustRead(t, busybox)},
		{Name: "usr/sbin/qemu-ga", Mode: 0o755, Data: mustRead(t, qemuGA)},
		{Name: "etc/qemu/fsfreeze-hook", Mode: 0o755, Data: []byte(guestHook)},
	}
	// qemu-ga's libraries where ldd finds them, the loader included.
	out, err := exec.Command("ldd", qemuGA).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", qemuGA, err)
	}
	for _, m := range regexp.MustCompile(`(?m)(/\S+) \(0x`).FindAllStringSubmatch(string(out), -1) {
		files = append(files, InitramfsFile{Name: m[1], Mode: 0o755, Data: mustRead(t, m[1])})
	}
	dir := filepath.Join(l.Dir, "images")
	initrd := filepath.Join(dir, name+".initrd")
	kernel.InitramfsWith(t, initrd, []byte(guestInit), files,
		"virtio_pci", "virtio_blk", "virtio_console", "ext4", "crc32c_generic")
	vmlinuz := filepath.Join(dir, name+".vmlinuz")
	os.WriteFile(vmlinuz, mustRead(t, kernel.Vmlinuz), 0o644)
	img := filepath.Join(dir, name+".qcow2")
	Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, img)
	g := &Guest{Name: name, Console: filepath.Join(l.Dir, "cache", name+".console"), lv: l}
	// Socket paths of our own: libvirt's default for the agent's is too
	// long for a unix socket under a temporary directory.
	ctl := filepath.Join(l.Dir, "run", name+".ctl")
	for _, p := range []string{initrd, vmlinuz, img} {
		os.Chown(p, l.uid, l.uid)
	}
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='%s'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='unix'><source mode='bind' path='%s'/><target type='virtio' name='org.strata.ctl.0'/></channel>
  </devices>
</domain>`, name, vmlinuz, initrd, img, g.Console, filepath.Join(l.Dir, "run", name+".agent"), ctl)
	def := filepath.Join(l.Dir, name+".xml")
	os.WriteFile(def, []byte(xml), 0o644)
	l.Virsh("define", def)
	l.Virsh("start", name)
	start := time.Now()
	g.WaitConsole("STRATA-GUEST-READY", 3*time.Minute)
	if g.ctl, err = net.Dial("unix", ctl); err != nil {
		t.Fatalf("the guest's control channel %s: %v", ctl, err)
	}
	t.Cleanup(func() { g.ctl.Close() })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := g.Agent(`{"execute":"guest-ping"}`); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the guest's agent does not answer: %v\n%s", err, g.ConsoleTail(3000))
		}
	}
	t.Logf("guest %s up with its agent in %v", name, time.Since(start).Round(time.Millisecond))
	return g, img
}

func (l *Libvirtd) fail(msg string) {
	l.t.Helper()
	if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
		l.t.Fatal(msg)
	}
	l.t.Skip(msg)
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ConsoleLog is everything the guest printed so far.
func (g *Guest) ConsoleLog() string {
	b, _ := os.ReadFile(g.Console)
	return string(b)
}

// ConsoleTail is the last n bytes of the console.
func (g *Guest) ConsoleTail(n int) string {
	s := g.ConsoleLog()
	return s[max(0, len(s)-n):]
}

// WaitConsole waits until the console holds s.
func (g *Guest) WaitConsole(s string, timeout time.Duration) {
	g.lv.t.Helper()
	for deadline := time.Now().Add(timeout); !strings.Contains(g.ConsoleLog(), s); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			g.lv.t.Fatalf("the guest's console has no %q after %v:\n%s", s, timeout, g.ConsoleTail(4000))
		}
	}
}

// Run runs a shell command in the guest through the test's own channel
// (not the agent) and returns its output.
func (g *Guest) Run(cmd string) string {
	g.lv.t.Helper()
	g.mu.Lock()
	g.runs++
	n := g.runs
	g.mu.Unlock()
	begin, end := fmt.Sprintf("STRATA-RUN-%d-BEGIN", n), fmt.Sprintf("STRATA-RUN-%d-END", n)
	line := fmt.Sprintf("{ echo %s; %s; echo %s $?; } > /dev/ttyS0 2>&1\n", begin, cmd, end)
	if _, err := g.ctl.Write([]byte(line)); err != nil {
		g.lv.t.Fatalf("guest control channel: %v", err)
	}
	g.WaitConsole(end, time.Minute)
	log := g.ConsoleLog()
	out := log[strings.Index(log, begin)+len(begin):]
	return strings.TrimSpace(out[:strings.Index(out, end)])
}

// AgentLog is the agent's log (verbose) since the last call: each call
// empties it.
func (g *Guest) AgentLog() string {
	g.lv.t.Helper()
	return g.Run("cat /run/qemu-ga.log; : > /run/qemu-ga.log")
}

// Agent sends a command to the guest's agent through libvirt.
func (g *Guest) Agent(cmd string) (string, error) {
	return g.lv.virsh("qemu-agent-command", g.Name, "--timeout", "5", cmd)
}

// Writes is the writer's last count on the console.
func (g *Guest) Writes() int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(g.ConsoleLog()))
	for sc.Scan() {
		var v int
		if _, err := fmt.Sscanf(strings.TrimSpace(sc.Text()), "STRATA-WRITER %d", &v); err == nil {
			n = v
		}
	}
	return n
}

// WaitWriting waits until the writer's count grows (the guest runs and
// its filesystem is not frozen).
func (g *Guest) WaitWriting(timeout time.Duration) {
	g.lv.t.Helper()
	from := g.Writes()
	for deadline := time.Now().Add(timeout); g.Writes() <= from; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			g.lv.t.Fatalf("the guest's writer is stuck at %d for %v:\n%s", from, timeout, g.ConsoleTail(3000))
		}
	}
}
