package main

import (
	"testing"

	"github.com/strata-backup/strata/pkg/vsphere"
)

func TestParseVSphereTarget(t *testing.T) {
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
		{to: "vsphere://vc/%zz", fails: true},
	}
	for _, tc := range tests {
		name, choice, err := parseVSphereTarget(tc.to)
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
