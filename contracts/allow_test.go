package contracts

import "testing"

func TestSourceUnder(t *testing.T) {
	allow := []string{"file:///srv/images/", "file:///data/vm1.img", "nbd://kvm1:10809"}
	for src, want := range map[string]bool{
		"file:///srv/images/a.img":      true,
		"file:///srv/images-evil/a.img": false,
		"file:///data/vm1.img":          true,
		"file:///data/vm1.img.bak":      false,
		"file:///etc/shadow":            false,
		"nbd://kvm1:10809/vm1":          true,
		"nbd://kvm1:10809/vm1?bitmap=b": true,
		"nbd://kvm1:108090/vm1":         false,
		"nbd://kvm10:10809/vm1":         false,
		"vsphere://vc/vm":               false,
	} {
		if got := SourceUnder(allow, src); got != want {
			t.Errorf("SourceUnder(%q) = %v", src, got)
		}
	}
}
