package contracts

import (
	"strings"
	"testing"
	"time"
)

func TestDecodeRejects(t *testing.T) {
	now := time.Now()
	okReq := `{"schema":1,"backup_id":"abc-1","vm":"web","source":"file:///x.img","requested_at":"` + now.Format(time.RFC3339) + `"}`
	if err := Decode([]byte(okReq), &BackupRequested{}); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	tests := []struct {
		name, data, want string
		msg              Message
	}{
		{"garbage", "not json", "decode", &BackupRequested{}},
		{"schema", strings.Replace(okReq, `"schema":1`, `"schema":9`, 1), "schema version", &BackupRequested{}},
		{"unknown field", strings.Replace(okReq, `{`, `{"x":1,`, 1), "unknown field", &BackupRequested{}},
		{"relative source", strings.Replace(okReq, "file:///x.img", "file://x.img", 1), "absolute path", &BackupRequested{}},
		{"bad scheme", strings.Replace(okReq, "file:///x.img", "ftp://h/x", 1), "unsupported scheme", &BackupRequested{}},
		{"bad id token", strings.Replace(okReq, "abc-1", "a.b", 1), "not a valid id", &BackupRequested{}},
		{"trailing", okReq + "{}", "trailing", &BackupRequested{}},
		{"segment too big", `{"schema":1,"backup_id":"b","vm":"v","disk":0,"index":0,"source":"file:///x","disk_size":1099511627776,"chunk_size":1048576,"first_chunk":0,"chunks":65}`, "segment of 65", &Segment{}},
		{"chunk size", `{"schema":1,"backup_id":"b","vm":"v","disk":0,"index":0,"source":"file:///x","disk_size":10,"chunk_size":1000,"first_chunk":0,"chunks":1}`, "power of two", &Segment{}},
		{"bad chunk id", `{"schema":1,"backup_id":"b","vm":"v","disk":0,"index":0,"first_chunk":0,"ids":["zz"]}`, "64 hex", &SegmentDone{}},
		{"stored beyond the segment", `{"schema":1,"backup_id":"b","vm":"v","disk":0,"index":0,"first_chunk":0,"ids":[""],"stored":[{"start":0,"count":2}]}`, "outside the segment", &SegmentDone{}},
		{"failed without reason", `{"schema":1,"backup_id":"b","vm":"v","state":"failed"}`, "reason", &BackupOutcome{}},
		{"missing batch empty", `{"schema":1,"ids":[]}`, "ids", &MissingRequest{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Decode([]byte(tc.data), tc.msg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestCatalogKeyIsValidKVKey(t *testing.T) {
	k := CatalogKey("my vm/ü:*>", "0193-abc")
	for _, r := range k {
		if !(r == '.' || r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			t.Fatalf("key %q has %q", k, r)
		}
	}
	if !strings.HasPrefix(k, CatalogVMPrefix("my vm/ü:*>")) {
		t.Fatal("key does not start with the vm prefix")
	}
}
