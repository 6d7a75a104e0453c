package fleet

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/natstest"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/policy"
)

func record(id string, state contracts.State) *contracts.BackupRecord {
	return &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: "web", Source: "file:///x.img", State: state, ChunkSize: 64 << 10,
		CreatedAt: time.Now().UTC(), Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: 1 << 20, Segments: 1}}}
}

// Outcomes noted in any order, and again, leave each VM's newest verified
// and newest failed backup; the fleet's watches see policies and statuses
// come and go, and its metrics say the same.
func TestStatusesAndFleetMetrics(t *testing.T) {
	nc := natstest.Start(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := (&bus.Bus{NC: nc, JS: js}).EnsureStreams(ctx, 1); err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(ctx, js, objstore.NewMem(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pols, err := policy.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Watch(ctx, cat, pols)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.VMs()) != 0 {
		t.Fatalf("empty fleet: %v", f.VMs())
	}

	// A verified backup, then an older one noted late, then a failure.
	ids := []string{"01a23600-0000-7000-8000-000000000001", "01a23600-0000-7000-8000-000000000002", "01a23600-0000-7000-8000-000000000003"}
	for _, id := range ids {
		if _, _, err := cat.Create(ctx, record(id, contracts.StateTransferring)); err != nil {
			t.Fatal(err)
		}
	}
	finish := func(id string, ok bool) {
		t.Helper()
		if !ok {
			if _, err := cat.Fail(ctx, "web", id, "source removed"); err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, _, err := cat.Commit(ctx, "web", id, []catalog.CommittedDisk{{Manifest: "m/" + id}}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := cat.MarkVerified(ctx, "web", id, contracts.VerifyStored, nil); err != nil {
			t.Fatal(err)
		}
	}
	finish(ids[0], true)
	time.Sleep(5 * time.Millisecond)
	finish(ids[1], true)
	if _, err := cat.NoteOutcome(ctx, "web", ids[1]); err != nil {
		t.Fatal(err)
	}
	st, err := cat.NoteOutcome(ctx, "web", ids[0]) // older, late: changes nothing
	if err != nil || st.LastVerified != ids[1] {
		t.Fatalf("late older outcome: %+v %v", st, err)
	}
	if _, err := cat.NoteOutcome(ctx, "web", ids[2]); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("unfinished backup noted: %v", err)
	}
	finish(ids[2], false)
	for range 2 { // a redelivery
		if st, err = cat.NoteOutcome(ctx, "web", ids[2]); err != nil {
			t.Fatal(err)
		}
	}
	if st.LastVerified != ids[1] || st.LastFailed != ids[2] || st.LastFailReason != "source removed" {
		t.Fatalf("status %+v", st)
	}

	if err := pols.Put(ctx, &contracts.Policy{Schema: contracts.SchemaVersion, VM: "web", Source: "file:///x.img", Schedule: "@every 1h", UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := pols.Put(ctx, &contracts.Policy{Schema: contracts.SchemaVersion, VM: "db", Source: "file:///y.img", Schedule: "@every 1h", RPO: 10 * time.Second, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		v := f.VMs()
		return len(v) == 2 && v[1].Status != nil && v[1].Status.LastFailed == ids[2] && v[0].Policy != nil
	})
	now := time.Now()
	vms := f.VMs()
	if vms[0].Name != "db" || vms[0].Health(now) != "red" || vms[0].RPO(now) != 10*time.Second {
		t.Fatalf("db (policy, never backed up): %+v health %s", vms[0], vms[0].Health(now))
	}
	if vms[1].RPO(now) != 2*time.Hour || vms[1].Health(now) != "amber" {
		t.Fatalf("web (verified, then a failure): health %s rpo %v", vms[1].Health(now), vms[1].RPO(now))
	}
	want := `
# HELP strata_backup_rpo_seconds The VM's recovery point objective, from its policy.
# TYPE strata_backup_rpo_seconds gauge
strata_backup_rpo_seconds{vm="db"} 10
strata_backup_rpo_seconds{vm="web"} 7200
`
	if err := testutil.CollectAndCompare(f, strings.NewReader(want), "strata_backup_rpo_seconds"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(f, "strata_backup_last_success_timestamp_seconds"); n != 1 {
		t.Fatalf("%d last-success series, want web's only", n)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(f); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}

	if err := pols.Delete(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(f.VMs()) == 1 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not reached")
}

// The alert rules and the Grafana dashboard in deploy/ name only metrics
// Strata exports (a renamed metric must not leave an alert that can never
// fire).
func TestDeployNamesExportedMetrics(t *testing.T) {
	known := map[string]bool{}
	for _, n := range append(metrics.Names(), Names()...) {
		known[n] = true
	}
	// Every fleet series is named by Names.
	descs := make(chan *prometheus.Desc, 16)
	(&Fleet{}).Describe(descs)
	close(descs)
	for d := range descs {
		name := regexp.MustCompile(`fqName: "([a-z0-9_]+)"`).FindStringSubmatch(d.String())[1]
		if !known[name] {
			t.Errorf("fleet exports %s, not in Names", name)
		}
	}
	re := regexp.MustCompile(`strata_[a-z0-9_]+`)
	for _, f := range []string{"../../deploy/prometheus/rules/strata.yml", "../../deploy/grafana/strata-dashboard.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, m := range re.FindAllString(string(b), -1) {
			if m == "strata_backups" { // the dashboard's uid
				continue
			}
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !known[m] && !known[base] {
				t.Errorf("%s names %s, which no service exports", f, m)
			}
			seen++
		}
		if seen < 10 {
			t.Errorf("%s: only %d metric names found", f, seen)
		}
	}
}
