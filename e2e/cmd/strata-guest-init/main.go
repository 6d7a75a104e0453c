// Command strata-guest-init is the whole userland of the VM the boot test
// starts from a served backup. Built static, it runs twice:
//
// As /init of the test's initramfs it loads the kernel modules listed in
// /modules/order (virtio and ext4 are modules in Debian's kernel), waits
// for the root= device, mounts it and hands over to its /sbin/init.
//
// As /sbin/init on the backed-up ext4 root it prints a marker and the
// SHA-256 of /payload.bin, writes /written-by-guest.txt, and powers off.
// Anything that goes wrong is printed as STRATA-GUEST-ERROR before the
// power-off, so the test reads a reason, not a timeout.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	var err error
	if os.Args[0] == "/init" {
		err = initramfs()
	} else {
		err = guest()
	}
	if err != nil {
		fmt.Printf("STRATA-GUEST-ERROR: %v\n", err)
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

func initramfs() error {
	os.MkdirAll("/dev", 0o755)
	os.MkdirAll("/proc", 0o755)
	if err := syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	// The kernel found no /dev/console in the initramfs: open it now.
	if c, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		syscall.Dup2(int(c.Fd()), 0)
		syscall.Dup2(int(c.Fd()), 1)
		syscall.Dup2(int(c.Fd()), 2)
	}
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	order, err := os.ReadFile("/modules/order")
	if err != nil {
		return err
	}
	for _, m := range strings.Fields(string(order)) {
		f, err := os.Open("/modules/" + m)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", m, err)
		}
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	root := ""
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "root="); ok {
			root = v
		}
	}
	if root == "" {
		return fmt.Errorf("no root= in %q", cmdline)
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(root); err == nil {
			break
		}
		if time.Since(start) > 60*time.Second {
			return fmt.Errorf("%s did not appear", root)
		}
	}
	os.MkdirAll("/newroot", 0o755)
	if err := syscall.Mount(root, "/newroot", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", root, err)
	}
	syscall.Unmount("/proc", 0)
	if err := syscall.Chdir("/newroot"); err != nil {
		return err
	}
	if err := syscall.Mount(".", "/", "", syscall.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return err
	}
	syscall.Chdir("/")
	return syscall.Exec("/sbin/init", []string{"/sbin/init"}, nil)
}

func guest() error {
	payload, err := os.ReadFile("/payload.bin")
	if err != nil {
		return err
	}
	sum := sha256.Sum256(payload)
	hash := hex.EncodeToString(sum[:])
	fmt.Printf("STRATA-GUEST-MARKER booted from the backup\nSTRATA-GUEST-SHA256 %s\n", hash)
	f, err := os.Create("/written-by-guest.txt")
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "written by the guest after booting from the backup; payload %s\n", hash); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	f.Close()
	// Read-only before power-off: the journal is flushed to the disk.
	if err := syscall.Mount("", "/", "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount / read-only: %w", err)
	}
	fmt.Println("STRATA-GUEST-DONE")
	return nil
}
