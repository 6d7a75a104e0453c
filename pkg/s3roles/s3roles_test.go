package s3roles

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestGenerateKeepsKeys(t *testing.T) {
	dir := t.TempDir()
	first, err := Generate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(Roles()) {
		t.Fatalf("%d keys for %d roles", len(first), len(Roles()))
	}
	seen := map[string]bool{}
	for role, k := range first {
		if k.Access == "" || len(k.Secret) < 32 || seen[k.Access] {
			t.Fatalf("role %s: weak or repeated key %+v", role, k.Access)
		}
		seen[k.Access] = true
		if _, err := ReadFile(filepath.Join(dir, File(role))); err != nil {
			t.Fatal(err)
		}
	}
	again, err := Generate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for role, k := range first {
		if again[role] != k {
			t.Fatalf("running Generate again changed %s's key", role)
		}
	}
}

func TestReadFileRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"no secret": "STRATA_S3_ACCESS_KEY=a\n",
		"stray":     "STRATA_S3_ACCESS_KEY=a\nSTRATA_S3_SECRET_KEY=b\nexport X=1\n",
		"empty":     "",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := ReadFile(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := filepath.Join(dir, "ok")
	os.WriteFile(p, []byte("# merge\nSTRATA_S3_ACCESS_KEY=a\n\nSTRATA_S3_SECRET_KEY=b=c\n"), 0o600)
	if k, err := ReadFile(p); err != nil || k.Access != "a" || k.Secret != "b=c" {
		t.Fatalf("%+v %v", k, err)
	}
}

func TestPolicyOnlyCollectorsDelete(t *testing.T) {
	keys, err := Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Policy("strata", keys)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Statement []statement
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	may := func(role, action string) bool {
		for _, s := range doc.Statement {
			if s.Effect == "Allow" && slices.Contains(s.Principal["AWS"], keys[role].Access) && slices.Contains(s.Action, action) {
				return true
			}
		}
		return false
	}
	for _, r := range Roles() {
		if !may(r.Name, "s3:PutObject") || !may(r.Name, "s3:GetObject") {
			t.Errorf("%s cannot read and write", r.Name)
		}
		if may(r.Name, "s3:DeleteObject") != r.Delete {
			t.Errorf("%s: delete %v, want %v", r.Name, !r.Delete, r.Delete)
		}
		if may(r.Name, "s3:BypassGovernanceRetention") || may(r.Name, "s3:PutBucketPolicy") {
			t.Errorf("%s may shorten retention or change the policy", r.Name)
		}
	}
	if may("transfer", "s3:DeleteObject") {
		t.Error("transfer may delete")
	}
	delete(keys, "dedup")
	if _, err := Policy("strata", keys); err == nil {
		t.Error("a policy without the dedup role's key")
	}
}
