package vsphere

import "testing"

func TestParseTarget(t *testing.T) {
	cfg := Config{URL: "https://vc.example/sdk"}
	tests := []struct {
		url      string
		endpoint string
		vm       string
		snapshot string
		disk     int32
		err      bool
	}{
		{"vsphere://vc1.example/web-01", "https://vc1.example/sdk", "web-01", "", 0, false},
		{"vsphere:///web-01", "https://vc.example/sdk", "web-01", "", 0, false},
		{"vsphere://vc1.example:8443/DC1/vm/apps/web-01", "https://vc1.example:8443/sdk", "/DC1/vm/apps/web-01", "", 0, false},
		{"vsphere://vc1.example/web-01?snapshot=snapshot-42&disk=2000", "https://vc1.example/sdk", "web-01", "snapshot-42", 2000, false},
		{"vsphere://vc1.example/", "", "", "", 0, true},
		{"vsphere://vc1.example/web-01?disk=x", "", "", "", 0, true},
		{"nbd://host:1/x", "", "", "", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.url, cfg)
		if (err != nil) != tt.err {
			t.Fatalf("%s: error %v, want error %v", tt.url, err, tt.err)
		}
		if err != nil {
			continue
		}
		if got.Endpoint != tt.endpoint || got.VM != tt.vm || got.Snapshot != tt.snapshot || got.DiskKey != tt.disk {
			t.Fatalf("%s: got %+v", tt.url, got)
		}
	}
	if _, err := ParseTarget("vsphere:///web-01", Config{}); err == nil {
		t.Fatal("a host-less URL without STRATA_VSPHERE_URL must be refused")
	}
	disk := DiskURL("vsphere://vc1.example/DC1/vm/web-01", "snapshot-7", 2001)
	got, err := ParseTarget(disk, cfg)
	if err != nil || got.VM != "/DC1/vm/web-01" || got.Snapshot != "snapshot-7" || got.DiskKey != 2001 {
		t.Fatalf("disk URL %s parsed as %+v, %v", disk, got, err)
	}
}
