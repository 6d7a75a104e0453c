// Package fleet is the live picture of every VM's protection: its policy
// (and so its RPO) and its latest outcomes (the catalog's VMStatus), kept
// current by two KV watches — memory O(VMs), never O(backups). It is the
// source of the per-VM metrics and of the console's fleet view.
package fleet

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/schedule"
)

// VM is one VM as the fleet sees it.
type VM struct {
	Name   string
	Policy *contracts.Policy   // nil: no policy (backed up on demand only)
	Status *contracts.VMStatus // nil: no backup finished yet
}

// RPO is the VM's recovery point objective (0: none, no policy).
func (v VM) RPO(now time.Time) time.Duration {
	if v.Policy == nil {
		return 0
	}
	return schedule.RPO(*v.Policy, now)
}

// Health is green (verified within the RPO), amber (verified, but the
// newest outcome is a failure or more than half the RPO has passed), red
// (nothing verified within the RPO), or none (no policy and no backup).
func (v VM) Health(now time.Time) string {
	rpo := v.RPO(now)
	var last *time.Time
	if v.Status != nil {
		last = v.Status.LastVerifiedAt
	}
	switch {
	case last == nil && rpo == 0:
		if v.Status != nil && v.Status.LastFailedAt != nil {
			return "red"
		}
		return "none"
	case last == nil:
		return "red"
	case rpo > 0 && now.Sub(*last) > rpo:
		return "red"
	case v.Status.LastFailedAt != nil && v.Status.LastFailedAt.After(*last):
		return "amber"
	case rpo > 0 && now.Sub(*last) > rpo/2:
		return "amber"
	}
	return "green"
}

// Fleet is the watched picture; safe for concurrent use.
type Fleet struct {
	mu  sync.Mutex
	vms map[string]*VM
}

// Watch starts both watches and returns once the current policies and
// statuses are in.
func Watch(ctx context.Context, cat *catalog.Catalog, policies *policy.Store) (*Fleet, error) {
	f := &Fleet{vms: map[string]*VM{}}
	changes, err := policies.Watch(ctx)
	if err != nil {
		return nil, err
	}
	statuses, err := cat.WatchStatuses(ctx, func(c catalog.StatusChange) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.vm(c.VM).Status = c.Status
		f.drop(c.VM)
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for c := range changes {
			if c.Err != nil {
				continue // the scheduler logs a bad policy
			}
			f.mu.Lock()
			if c.Policy != nil {
				f.vm(c.Policy.VM).Policy = c.Policy
			} else {
				for name, v := range f.vms {
					if v.Policy != nil && contracts.PolicyKey(v.Policy.VM) == c.Key {
						v.Policy = nil
						f.drop(name)
					}
				}
			}
			f.mu.Unlock()
		}
	}()
	select {
	case <-statuses:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return f, nil
}

func (f *Fleet) vm(name string) *VM {
	v := f.vms[name]
	if v == nil {
		v = &VM{Name: name}
		f.vms[name] = v
	}
	return v
}

func (f *Fleet) drop(name string) {
	if v := f.vms[name]; v != nil && v.Policy == nil && v.Status == nil {
		delete(f.vms, name)
	}
}

// VMs returns every VM, by name.
func (f *Fleet) VMs() []VM {
	f.mu.Lock()
	out := make([]VM, 0, len(f.vms))
	for _, v := range f.vms {
		out = append(out, *v)
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b VM) int { return strings.Compare(a.Name, b.Name) })
	return out
}

var (
	lastSuccessDesc = prometheus.NewDesc("strata_backup_last_success_timestamp_seconds",
		"When the VM's newest verified backup finished (Unix time).", []string{"vm"}, nil)
	lastFailureDesc = prometheus.NewDesc("strata_backup_last_failure_timestamp_seconds",
		"When the VM's newest failed backup ended (Unix time).", []string{"vm"}, nil)
	rpoDesc = prometheus.NewDesc("strata_backup_rpo_seconds",
		"The VM's recovery point objective, from its policy.", []string{"vm"}, nil)
	policyDesc = prometheus.NewDesc("strata_policy_updated_timestamp_seconds",
		"When the VM's policy was last set: a VM never verified since is unprotected once its RPO has passed.", []string{"vm"}, nil)
)

// Describe and Collect make the fleet a Prometheus collector.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	ch <- lastSuccessDesc
	ch <- lastFailureDesc
	ch <- rpoDesc
	ch <- policyDesc
}

func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, v := range f.VMs() {
		if rpo := v.RPO(now); rpo > 0 {
			ch <- prometheus.MustNewConstMetric(rpoDesc, prometheus.GaugeValue, rpo.Seconds(), v.Name)
			ch <- prometheus.MustNewConstMetric(policyDesc, prometheus.GaugeValue, float64(v.Policy.UpdatedAt.UnixMilli())/1000, v.Name)
		}
		if v.Status == nil {
			continue
		}
		if t := v.Status.LastVerifiedAt; t != nil {
			ch <- prometheus.MustNewConstMetric(lastSuccessDesc, prometheus.GaugeValue, float64(t.UnixMilli())/1000, v.Name)
		}
		if t := v.Status.LastFailedAt; t != nil {
			ch <- prometheus.MustNewConstMetric(lastFailureDesc, prometheus.GaugeValue, float64(t.UnixMilli())/1000, v.Name)
		}
	}
}

// BadChunks is the strata_bad_chunks gauge: how many chunks are marked
// damaged or missing (count reads the marks; O(bad chunks)).
func BadChunks(count func() (int, error)) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strata_bad_chunks",
		Help: "Chunks marked damaged or missing, waiting to be rewritten by a later backup."}, func() float64 {
		n, err := count()
		if err != nil {
			return math.NaN()
		}
		return float64(n)
	})
}

// Names lists the metrics of this package (for checks of deploy/).
func Names() []string {
	return []string{"strata_backup_last_success_timestamp_seconds", "strata_backup_last_failure_timestamp_seconds",
		"strata_backup_rpo_seconds", "strata_policy_updated_timestamp_seconds", "strata_bad_chunks"}
}
