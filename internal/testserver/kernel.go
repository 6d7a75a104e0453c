package testserver

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Kernel is Debian's amd64 kernel, unpacked from its package.
type Kernel struct {
	Vmlinuz string // the kernel image
	Modules string // lib/modules/<release>
}

// DebianKernel returns Debian's current amd64 kernel (the package
// linux-image-amd64 depends on), fetched with apt-get download and
// unpacked with dpkg-deb once into ~/.cache/strata/kernel (or
// $STRATA_KERNEL_CACHE). Without apt the test is skipped, or fails with
// STRATA_REQUIRE_SERVERS=1.
func DebianKernel(t testing.TB) Kernel {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		fail("apt-cache depends linux-image-amd64: %v (Debian's kernel package is needed)", err)
	}
	pkg := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(v, "linux-image-") {
			pkg = v
		}
	}
	if pkg == "" {
		fail("linux-image-amd64 depends on no kernel package:\n%s", out)
	}
	cache := os.Getenv("STRATA_KERNEL_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "strata", "kernel")
	}
	dir := filepath.Join(cache, pkg)
	if _, err := os.Stat(dir); err != nil {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		tmp, err := os.MkdirTemp(cache, ".fetch-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		get := exec.Command("apt-get", "download", pkg)
		get.Dir = tmp
		if o, err := get.CombinedOutput(); err != nil {
			fail("apt-get download %s: %v\n%s", pkg, err, o)
		}
		debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(debs) != 1 {
			t.Fatalf("apt-get download %s left %v", pkg, debs)
		}
		if o, err := exec.Command("dpkg-deb", "-x", debs[0], filepath.Join(tmp, "x")).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", debs[0], err, o)
		}
		if err := os.Rename(filepath.Join(tmp, "x"), dir); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	kernels, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(kernels) != 1 || len(mods) != 1 {
		t.Fatalf("%s: kernels %v, module trees %v", dir, kernels, mods)
	}
	return Kernel{Vmlinuz: kernels[0], Modules: mods[0]}
}

// Initramfs writes a gzip-compressed initramfs to path holding init as
// /init, and the named modules with every module they depend on (read
// from each module's .modinfo) under /modules, listed in load order in
// /modules/order.
func (k Kernel) Initramfs(t testing.TB, path, init string, modules ...string) {
	t.Helper()
	initBytes, err := os.ReadFile(init)
	if err != nil {
		t.Fatal(err)
	}
	k.InitramfsWith(t, path, initBytes, nil, modules...)
}

// InitramfsFile is a file of an initramfs beyond its init and modules
// (Name relative to its root, directories above it made).
type InitramfsFile struct {
	Name string
	Mode uint32 // permission bits
	Data []byte
}

// InitramfsWith is Initramfs with init given as bytes and more files.
func (k Kernel) InitramfsWith(t testing.TB, path string, init []byte, files []InitramfsFile, modules ...string) {
	t.Helper()
	byName := map[string]string{}
	filepath.WalkDir(filepath.Join(k.Modules, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			byName[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return nil
	})
	var order []string
	seen := map[string]bool{}
	var visit func(name string)
	visit = func(name string) {
		name = strings.ReplaceAll(name, "-", "_")
		if seen[name] {
			return
		}
		seen[name] = true
		p, ok := byName[name]
		if !ok {
			t.Fatalf("module %s not in %s", name, k.Modules)
		}
		for _, dep := range moduleDepends(t, p) {
			visit(dep)
		}
		order = append(order, name)
	}
	for _, m := range modules {
		visit(m)
	}
	var archive bytes.Buffer
	w := newcWriter{w: &archive, dirs: map[string]bool{}}
	w.file("init", 0o100755, init)
	w.file("modules", 0o40755, nil)
	var list []string
	for _, m := range order {
		b, err := os.ReadFile(byName[m])
		if err != nil {
			t.Fatal(err)
		}
		w.file("modules/"+m+".ko", 0o100644, b)
		list = append(list, m+".ko")
	}
	w.file("modules/order", 0o100644, []byte(strings.Join(list, "\n")+"\n"))
	for _, f := range files {
		name := strings.TrimPrefix(f.Name, "/")
		w.parents(name)
		w.file(name, 0o100000|f.Mode, f.Data)
	}
	w.file("TRAILER!!!", 0, nil)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	gz.Write(archive.Bytes())
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
}

// moduleDepends reads the depends= entry of a kernel module's .modinfo.
func moduleDepends(t testing.TB, path string) []string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("module %s: %v", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil
	}
	data, err := sec.Data()
	if err != nil {
		t.Fatalf("module %s: %v", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			return strings.Split(string(v), ",")
		}
	}
	return nil
}

// newcWriter writes a cpio archive in the "new ASCII" format the kernel
// unpacks as an initramfs. Written here: a few lines, where a library
// would bring a general archiver for one test.
type newcWriter struct {
	w    *bytes.Buffer
	ino  int
	dirs map[string]bool
}

// parents writes the directories above name not written yet (the kernel
// does not make them).
func (c *newcWriter) parents(name string) {
	dir := filepath.Dir(name)
	if dir == "." || c.dirs[dir] {
		return
	}
	c.parents(dir)
	c.dirs[dir] = true
	c.file(dir, 0o40755, nil)
}

func (c *newcWriter) file(name string, mode uint32, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o40000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad()
	c.w.Write(data)
	c.pad()
}

func (c *newcWriter) pad() {
	for c.w.Len()%4 != 0 {
		c.w.WriteByte(0)
	}
}
