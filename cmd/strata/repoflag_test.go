package main

import (
	"strings"
	"testing"

	"github.com/strata-backup/strata/pkg/runtime"
)

// --repo turns NATS off and names the store; anything else is a usage
// error naming what is wrong.
func TestApplyRepo(t *testing.T) {
	for spec, want := range map[string]runtime.Common{
		"dir:///srv/strata/../copy":                  {StoreDir: "/srv/copy", S3Region: "us-east-1"},
		"s3://backups":                               {S3Bucket: "backups", S3Region: "us-east-1"},
		"s3://backups/site1?endpoint=http://gw:7070": {S3Bucket: "backups", S3Prefix: "site1/", S3Endpoint: "http://gw:7070", S3Region: "us-east-1"},
		"s3://backups/a/b/?region=eu-west-3":         {S3Bucket: "backups", S3Prefix: "a/b/", S3Region: "eu-west-3"},
	} {
		c := runtime.Common{NATSURL: "nats://x:4222", S3Region: "us-east-1", StoreDir: "/configured", S3Bucket: "configured"}
		if err := applyRepo(spec, &c); err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		want.NATSURL = ""
		if want.StoreDir == "" && want.S3Bucket == "" {
			t.Fatal("bad case")
		}
		if want.StoreDir != "" {
			want.S3Bucket = "configured" // a directory leaves S3 settings unused
		}
		if c != want {
			t.Errorf("%s: %+v, want %+v", spec, c, want)
		}
	}
	for spec, says := range map[string]string{
		"dir://host/srv":                    "dir:///absolute/path",
		"dir://relative":                    "dir:///absolute/path",
		"s3:///prefix":                      "no bucket",
		"s3://b?endpoint=file:///etc":       "not an http(s) URL",
		"s3://b?endpoint=http://x&secret=1": `unknown parameter "secret"`,
		"ftp://host/x":                      "dir:///path or s3://",
		"%zz":                               "invalid URL escape",
	} {
		var c runtime.Common
		err := applyRepo(spec, &c)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want an error saying %q", spec, err, says)
		}
		if ee, ok := err.(exitError); !ok || ee.code != 2 {
			t.Errorf("%s: not a usage error: %#v", spec, err)
		}
	}
}
