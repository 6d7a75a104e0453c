package testserver

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// LVMDisk describes the disk LVMImage made.
type LVMDisk struct {
	VG string
	// Root and Data are the trees in the ext4 filesystems of VG/root
	// (linear) and VG/data (striped over both PVs).
	Root, Data string
	// FATFile is the one file of the FAT filesystem in logical partition 5.
	FATFile []byte
}

// LVMImage writes a 64 MiB MBR disk: partitions 1 and 2 are LVM2
// physical volumes of one volume group (made by the real lvm2 tools on
// loop devices over the partitions; the kernel's device mapper is not
// needed, nothing is activated), with a linear LV "root" and an LV "data"
// striped over both PVs (64 KiB stripes), each holding an ext4 filesystem
// made by mkfs.ext4 -d and put in place through the layout lvs reports;
// partition 3 is an extended partition whose logical partition 5 holds
// FAT. Needs root and loop devices: skipped without root or lvm2 (fatal
// with STRATA_REQUIRE_SERVERS=1), skipped with the reason where the
// machine has no loop devices.
func LVMImage(t testing.TB, path string) LVMDisk {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	for _, tool := range []string{"losetup", "pvcreate", "vgcreate", "lvcreate", "lvs"} {
		if _, err := lookTool(tool); err != nil {
			skip("%s not found (apt-get install lvm2 util-linux)", tool)
		}
	}
	if os.Geteuid() != 0 {
		skip("LVM2 test images need root (loop devices)")
	}
	const mib = 1 << 20
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(path, 64*mib)
	Tool(t, "label: dos\nstart=2048, size=49152, type=8e\nstart=51200, size=49152, type=8e\nstart=100352, size=30720, type=5\nstart=102400, size=28672, type=c\n", "sfdisk", "--quiet", path)
	parts := [][2]int64{{1 * mib, 24 * mib}, {25 * mib, 24 * mib}}
	var loops []string
	for _, p := range parts {
		out, err := exec.Command("losetup", "-f", "--show", "-o", fmt.Sprint(p[0]), "--sizelimit", fmt.Sprint(p[1]), path).CombinedOutput()
		if err != nil {
			// A machine without loop devices cannot run lvm2's tools on a
			// file: say so rather than fail (the rest of the suite stands).
			t.Skipf("losetup: %v: %s (no loop devices on this machine: LVM2 disks cannot be made here)", err, out)
		}
		loop := strings.TrimSpace(string(out))
		loops = append(loops, loop)
	}
	vg := fmt.Sprintf("strata%06d", rand.IntN(1e6))
	lvm := func(args ...string) string {
		t.Helper()
		bin, _ := lookTool(args[0])
		cmd := exec.Command(bin, append([]string{"--driverloaded", "n"}, args[1:]...)...)
		cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, out, stderr.String())
		}
		return string(out)
	}
	lvm("pvcreate", "-y", loops[0], loops[1])
	lvm("vgcreate", "-s", "1m", vg, loops[0], loops[1])
	lvm("lvcreate", "-an", "-Zn", "-y", "-n", "root", "-L", "12m", vg)
	lvm("lvcreate", "-an", "-Zn", "-y", "-n", "data", "-i", "2", "-I", "64k", "-L", "16m", vg)
	// Forget the VG on this host once the test is done (its metadata
	// stays on the image: the loops are detached, nothing is removed).
	t.Cleanup(func() {
		for _, l := range loops {
			exec.Command("losetup", "-d", l).Run()
		}
	})
	num := func(s string) int64 {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			t.Fatalf("lvm reported %q", s)
		}
		return n
	}
	extent := num(lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_extent_size", vg))
	peStart := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start", loops[0], loops[1])), "\n") {
		f := strings.Fields(line)
		peStart[f[0]] = num(f[1])
	}
	loopOff := map[string]int64{loops[0]: parts[0][0], loops[1]: parts[1][0]}
	d := LVMDisk{VG: vg, Root: t.TempDir(), Data: t.TempDir(), FATFile: RandomBytes(11, 70<<10)}
	os.MkdirAll(filepath.Join(d.Root, "etc"), 0o755)
	os.WriteFile(filepath.Join(d.Root, "etc", "hostname"), []byte("lvm-guest\n"), 0o644)
	os.WriteFile(filepath.Join(d.Root, "payload.bin"), RandomBytes(12, 3<<20), 0o600)
	os.Symlink("etc/hostname", filepath.Join(d.Root, "hostname-link"))
	os.WriteFile(filepath.Join(d.Data, "striped.bin"), RandomBytes(13, 5<<20+333), 0o644)

	img, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, lv := range []struct {
		name, tree string
		size       int64
	}{{"root", d.Root, 12 * mib}, {"data", d.Data, 16 * mib}} {
		fsImg := filepath.Join(t.TempDir(), lv.name+".ext4")
		Tool(t, "", "mkfs.ext4", "-q", "-F", "-d", lv.tree, fsImg, fmt.Sprintf("%dk", lv.size>>10))
		fsBytes, err := os.ReadFile(fsImg)
		if err != nil {
			t.Fatal(err)
		}
		// The layout as lvs reports it: devices "PV(first extent)" per stripe.
		out := lvm("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "stripes,stripe_size,devices", vg+"/"+lv.name)
		f := strings.Fields(out)
		stripes, unit := num(f[0]), num(f[1])
		var legs []int64
		for _, dev := range strings.Split(f[2], ",") {
			name, pe, _ := strings.Cut(strings.TrimSuffix(dev, ")"), "(")
			legs = append(legs, loopOff[name]+peStart[name]+num(pe)*extent)
		}
		if int64(len(legs)) != stripes {
			t.Fatalf("lvs: %d stripes, devices %v", stripes, f[2])
		}
		if stripes == 1 {
			img.WriteAt(fsBytes, legs[0])
			continue
		}
		for off := int64(0); off < int64(len(fsBytes)); off += unit {
			u := off / unit
			img.WriteAt(fsBytes[off:off+unit], legs[u%stripes]+(u/stripes)*unit)
		}
	}
	// The FAT in the logical partition (sector 102400).
	fat := filepath.Join(t.TempDir(), "fat.img")
	Tool(t, "", "mkfs.vfat", "-C", fat, fmt.Sprint(28672/2))
	src := filepath.Join(t.TempDir(), "BOOT.BIN")
	os.WriteFile(src, d.FATFile, 0o644)
	CopyToFAT(t, fat, 0, src)
	fb, _ := os.ReadFile(fat)
	img.WriteAt(fb, 102400*512)
	return d
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// LookTool finds a system tool on PATH or in /usr/sbin and /sbin (root's
// tools, off an ordinary user's PATH).
func LookTool(name string) (string, error) { return lookTool(name) }
