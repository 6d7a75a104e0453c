package libvirt

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

func TestParseTarget(t *testing.T) {
	for _, c := range []struct{ in, conn, domain string }{
		{"libvirt+unix:///system/web-01", "qemu+unix:///system", "web-01"},
		{"qemu+unix:///session/db.1?socket=/run/user/1000/libvirt/libvirt-sock", "qemu+unix:///session?socket=%2Frun%2Fuser%2F1000%2Flibvirt%2Flibvirt-sock", "db.1"},
		{"libvirt+ssh://root@kvm1:2222/system/web-01?keyfile=/root/.ssh/id_ed25519", "qemu+ssh://root@kvm1:2222/system?keyfile=%2Froot%2F.ssh%2Fid_ed25519", "web-01"},
	} {
		tg, err := ParseTarget(c.in)
		if err != nil || tg.Conn.String() != c.conn || tg.Domain != c.domain {
			t.Errorf("%s: %v %q %q", c.in, err, tg.Conn, tg.Domain)
		}
	}
	disk := DiskURL("libvirt+unix:///system/web-01", "01a23771-2f1e-7578-b6aa-8835acc74e2f", "vdb", "strata-01a23771-2f1e-7578-b6aa-8835acc74e2e", false, Export{})
	if tg, err := ParseTarget(disk); err != nil || tg.Disk != "vdb" || tg.Backup != "01a23771-2f1e-7578-b6aa-8835acc74e2f" || tg.Since != "strata-01a23771-2f1e-7578-b6aa-8835acc74e2e" || tg.NBD != "" {
		t.Errorf("disk URL %s: %+v %v", disk, tg, err)
	}
	// A job exporting over TCP: the address travels in the disk's URL.
	disk = DiskURL("libvirt+ssh://root@kvm1/system/web-01", "01a23771-2f1e-7578-b6aa-8835acc74e2f", "vda", "", false, Export{Host: "kvm1", Port: 10811})
	if tg, err := ParseTarget(disk); err != nil || tg.NBD != "kvm1:10811" || tg.Conn.Hostname() != "kvm1" {
		t.Errorf("disk URL %s: %+v %v", disk, tg, err)
	}
	// Which job is whose: by socket, or by the scratch files' prefix.
	cfg := Settings{ScratchDir: "/var/lib/strata/libvirt", NBDPorts: "10809-10872"}
	const id = "01a23771-2f1e-7578-b6aa-8835acc74e2f"
	if !cfg.Owns(&Job{Export: Export{Socket: cfg.Socket(id)}}, id) || !cfg.Owns(&Job{Export: Export{Host: "kvm1", Port: 10811}, Scratch: cfg.ScratchBase(id) + "-vda.scratch"}, id) ||
		cfg.Owns(&Job{Export: Export{Host: "kvm1", Port: 10811}, Scratch: cfg.ScratchBase("01a23771-2f1e-7578-b6aa-8835acc74e2e") + "-vda.scratch"}, id) || cfg.Owns(nil, id) {
		t.Error("job ownership")
	}
	if first, last, err := cfg.PortRange(); first != 10809 || last != 10872 || err != nil {
		t.Errorf("port range: %d-%d %v", first, last, err)
	}
	for _, bad := range []string{"10809", "0-10", "20-10", "a-b", "1-70000"} {
		if _, _, err := (Settings{NBDPorts: bad}).PortRange(); err == nil {
			t.Errorf("port range %q accepted", bad)
		}
	}
	for _, bad := range []string{
		"libvirt+tcp://host/system/web",                  // no authentication
		"libvirt+unix:///system/",                        // no domain
		"libvirt+unix:///root/web",                       // neither system nor session
		"libvirt+unix:///system/a/b",                     // a path, not a name
		"libvirt+unix:///system/../etc",                  // a hostile name
		"libvirt+unix://host/system/web",                 // a unix socket is local
		"libvirt+unix:///system/web?socket=run/sock",     // relative socket
		"libvirt+unix:///system/web?socket=/run/../sock", // unclean socket
		"libvirt+unix:///system/web?socket=/a&socket=/b", // twice
		"libvirt+unix:///system/web?no_verify=1",         // unknown option
		"libvirt+unix:///system/web?keyfile=/k",          // ssh option on unix
		"libvirt+ssh:///system/web",                      // no host
		"libvirt+ssh://h/system/web?socket=/s",           // unix option on ssh
		"libvirt+unix:///system/web?backup=x&disk=vda",   // not a UUID
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=../x",
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=vda&since=other",
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=vda&image=yes",
		"libvirt+unix:///system/web?image=1",
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=vda&nbd=host",
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=vda&nbd=host:0",
		"libvirt+unix:///system/web?backup=01a23771-2f1e-7578-b6aa-8835acc74e2f&disk=vda&nbd=:10809",
	} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestParseRestoreTarget(t *testing.T) {
	rt, err := ParseRestoreTarget("libvirt+unix:///system/web-02?dir=/var/lib/libvirt/images&format=raw&start=true")
	if err != nil || rt.Domain != "web-02" || rt.Dir != "/var/lib/libvirt/images" || rt.Format != "raw" || !rt.Start ||
		rt.ImagePath(rt.Dir, "vda") != "/var/lib/libvirt/images/web-02-vda.img" {
		t.Fatalf("%+v %v", rt, err)
	}
	for _, bad := range []string{
		"libvirt+unix:///system/web-02?dir=images",  // relative
		"libvirt+unix:///system/web-02?format=vmdk", // unknown format
		"libvirt+unix:///system/web-02?start=maybe", // not a bool
		"libvirt+ssh://host/system/web-02",          // images are written here
		"libvirt+unix:///system/web-02?dir=/a/../b", // unclean
	} {
		if _, err := ParseRestoreTarget(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

const recorded = `<domain type='kvm'>
  <name>web-01</name>
  <uuid>7c76a962-b8df-4295-8f6c-69aa2b7fd177</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web-01.qcow2'/><backingStore type='file'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>
    <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/><model type='virtio'/></interface>
  </devices>
</domain>`

func TestNewDomainXML(t *testing.T) {
	out, err := NewDomainXML(recorded, "web-01-dr", map[string]DiskSource{
		"vda": {File: "/srv/web-01-dr-vda.qcow2", Format: "qcow2"},
		"vdb": {NBDExport: "disk1", NBDSocket: "/run/strata/serve.sock"},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<name>web-01-dr</name>", "/srv/web-01-dr-vda.qcow2", `protocol="nbd" name="disk1"`, `socket="/run/strata/serve.sock"`, "/iso/debian.iso"} {
		if !strings.Contains(out, want) {
			t.Errorf("new XML lacks %s:\n%s", want, out)
		}
	}
	for _, gone := range []string{"7c76a962", "52:54:00:12:34:56", "base.qcow2", "/dev/vg0/data", "web-01.qcow2", "<interface"} {
		if strings.Contains(out, gone) {
			t.Errorf("new XML keeps %s:\n%s", gone, out)
		}
	}
	if _, err := NewDomainXML(recorded, "x", map[string]DiskSource{"vdz": {File: "/x"}}, true); err == nil {
		t.Error("a disk the XML does not have was accepted")
	}
	if withNICs, _ := NewDomainXML(recorded, "x", map[string]DiskSource{"vda": {File: "/x", Format: "raw"}}, true); !strings.Contains(withNICs, "<interface") || strings.Contains(withNICs, "52:54:00") {
		t.Errorf("with NICs, new MACs:\n%s", withNICs)
	}
	if dir, err := ImageDir(recorded); err != nil || dir != "/var/lib/libvirt/images" {
		t.Errorf("image dir %q %v", dir, err)
	}
	if b := BackupDisks(mustDomain(t, recorded)); strings.Join(b, ",") != "vda,vdb" {
		t.Errorf("backup disks %v", b)
	}
}

func mustDomain(t *testing.T, x string) *libvirtxml.Domain {
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return &d
}
