package source

import (
	"net/url"
	"testing"

	"github.com/strata-backup/strata/pkg/vsphere"
)

func TestParseRestoreTarget(t *testing.T) {
	tests := []struct {
		to     string
		name   string
		choice vsphere.Choice
		fails  bool
	}{
		{to: "vsphere://vc.example.com/web-01-restored", name: "web-01-restored"},
		{to: "vsphere://vc/web?datastore=ds2&pool=/DC1/host/C1/Resources&folder=/DC1/vm/dr", name: "web",
			choice: vsphere.Choice{Datastore: "ds2", Pool: "/DC1/host/C1/Resources", Folder: "/DC1/vm/dr"}},
		{to: "vsphere://vc/", fails: true},
		{to: "vsphere://vc/a/b", fails: true},
		{to: "vsphere://vc/web?network=x", fails: true},
	}
	for _, tc := range tests {
		u, err := url.Parse(tc.to)
		if err != nil {
			t.Fatal(err)
		}
		name, choice, err := ParseRestoreTarget(u)
		if tc.fails {
			if err == nil {
				t.Errorf("%s: accepted as %q %+v", tc.to, name, choice)
			}
			continue
		}
		if err != nil || name != tc.name || choice != tc.choice {
			t.Errorf("%s: %q %+v %v; want %q %+v", tc.to, name, choice, err, tc.name, tc.choice)
		}
	}
}

// The registry decides what is a hypervisor target and which kinds of
// backup restore where.
func TestRestoresTo(t *testing.T) {
	o := &Opener{}
	for target, want := range map[string]bool{
		"vsphere://vc/new-vm": true, "/tmp/disk.img": false, "disk.img": false, "file:///tmp/x.img": false, "nbd://h:1/x": false,
	} {
		if got := o.RestoresTo(target); got != want {
			t.Errorf("RestoresTo(%q) = %v", target, got)
		}
	}
}
