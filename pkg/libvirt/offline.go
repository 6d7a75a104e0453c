package libvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"libvirt.org/go/libvirtxml"
)

// A shut-off domain has no QEMU to run a backup job: its images are read
// directly, each exported read-only by its own qemu-nbd on a unix socket
// in the scratch directory (qemu-nbd's image lock also keeps the domain
// from starting while the backup reads). An incremental reads the
// persistent bitmap libvirt keeps in each qcow2 image under the newest
// checkpoint's name: it holds every change since that point, whenever
// the domain ran.

// ImageDisk is a disk of a shut-off domain: its image and format.
type ImageDisk struct {
	Dev, Path, Format string
}

// ImageDisks lists the image of every disk a backup reads; network disks
// (Ceph RBD, iSCSI, …) are refused.
func ImageDisks(d *libvirtxml.Domain) ([]ImageDisk, error) {
	var out []ImageDisk
	for _, disk := range backedUp(d) {
		dev := disk.Target.Dev
		img := ImageDisk{Dev: dev, Format: "raw"}
		if disk.Driver != nil && disk.Driver.Type != "" {
			img.Format = disk.Driver.Type
		}
		switch {
		case disk.Source != nil && disk.Source.File != nil:
			img.Path = disk.Source.File.File
		case disk.Source != nil && disk.Source.Block != nil:
			img.Path = disk.Source.Block.Dev
		}
		if img.Path == "" || !filepath.IsAbs(img.Path) {
			return nil, fmt.Errorf("disk %s is not a local image or block device: a shut-off domain is read from its images", dev)
		}
		if img.Format != "raw" && img.Format != "qcow2" {
			return nil, fmt.Errorf("disk %s is %s: shut-off domains are read from raw and qcow2 images", dev, img.Format)
		}
		out = append(out, img)
	}
	return out, nil
}

// Bitmap reports whether a qcow2 image holds a usable persistent dirty
// bitmap of that name ("in-use" after a crash is not usable), and if not,
// why.
func Bitmap(ctx context.Context, img ImageDisk, name string) (bool, string, error) {
	if img.Format != "qcow2" {
		return false, fmt.Sprintf("disk %s is %s (bitmaps live in qcow2 images)", img.Dev, img.Format), nil
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", img.Path).Output()
	if err != nil {
		return false, "", fmt.Errorf("qemu-img info %s: %w", img.Path, err)
	}
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name  string   `json:"name"`
					Flags []string `json:"flags"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return false, "", fmt.Errorf("qemu-img info %s: %w", img.Path, err)
	}
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		if b.Name != name {
			continue
		}
		for _, f := range b.Flags {
			if f == "in-use" {
				return false, fmt.Sprintf("disk %s: bitmap %s was not saved cleanly (QEMU stopped without closing the image)", img.Dev, name), nil
			}
		}
		return true, "", nil
	}
	return false, fmt.Sprintf("disk %s has no bitmap %s", img.Dev, name), nil
}

// ImageSocket is where qemu-nbd exports one disk of a shut-off domain's
// backup.
func (c Settings) ImageSocket(backupID, dev string) string {
	return filepath.Join(c.ScratchDir, backupID+"-"+dev+".sock")
}

func (c Settings) imagePID(backupID, dev string) string {
	return filepath.Join(c.ScratchDir, backupID+"-"+dev+".pid")
}

// ExportImage starts (or, redelivered, finds running) the qemu-nbd that
// exports one disk of a shut-off domain for a backup, read-only, with the
// bitmap when one is named.
func (c Settings) ExportImage(ctx context.Context, backupID string, img ImageDisk, bitmap string) error {
	sock, pidFile := c.ImageSocket(backupID, img.Dev), c.imagePID(backupID, img.Dev)
	if pid, ok := livePID(pidFile); ok {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if err := os.MkdirAll(c.ScratchDir, 0o755); err != nil {
		return err
	}
	os.Remove(sock)
	args := []string{"--fork", "--persistent", "--read-only", "--shared=16", "--socket=" + sock, "--pid-file=" + pidFile,
		"--format=" + img.Format, "--export-name=" + img.Dev}
	if bitmap != "" {
		args = append(args, "--bitmap="+bitmap)
	}
	out, err := exec.CommandContext(ctx, "qemu-nbd", append(args, img.Path)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("export disk %s (%s) with qemu-nbd: %v: %s", img.Dev, img.Path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StopImageExports stops the qemu-nbd processes of a backup of a shut-off
// domain; it reports whether there were any.
func (c Settings) StopImageExports(backupID string) (bool, error) {
	pids, err := filepath.Glob(filepath.Join(c.ScratchDir, backupID+"-*.pid"))
	if err != nil {
		return false, err
	}
	for _, pidFile := range pids {
		if pid, ok := livePID(pidFile); ok {
			syscall.Kill(pid, syscall.SIGTERM)
			for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					syscall.Kill(pid, syscall.SIGKILL)
					break
				}
			}
		}
		os.Remove(pidFile)
		os.Remove(strings.TrimSuffix(pidFile, ".pid") + ".sock")
	}
	return len(pids) > 0, nil
}

// livePID reads a pid file and reports whether that process is a
// qemu-nbd that still runs.
func livePID(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "qemu-nbd" {
		return 0, false
	}
	return pid, true
}
