package source

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/consistency"
	"github.com/strata-backup/strata/pkg/libvirt"
	"github.com/strata-backup/strata/pkg/nbd"
)

// libvirtDriver is libvirt+unix:// and libvirt+ssh:// sources: domains
// of a libvirt host (KVM/QEMU). A backup is a pull-mode backup job: QEMU
// holds the point in time (copy-before-write into scratch files) and
// exports it over NBD; the job creates the checkpoint strata-<backup id>
// (a persistent dirty bitmap per disk), and the next backup's job is
// incremental from it. Only the newest verified backup's checkpoint is
// kept: older ones cost the guest a bitmap update per write.
type libvirtDriver struct {
	cfg libvirt.Settings
}

func (d libvirtDriver) target(rawURL string) (libvirt.Target, error) {
	if d.cfg.ScratchDir == "" {
		return libvirt.Target{}, errors.New("libvirt sources are not configured in this process (STRATA_LIBVIRT_SCRATCH_DIR)")
	}
	return libvirt.ParseTarget(rawURL)
}

func (d libvirtDriver) Snapshot(ctx context.Context, rawURL, backupID string) (*Point, error) {
	return d.SnapshotConsistent(ctx, rawURL, backupID, consistency.Want{Mode: consistency.Crash})
}

// SnapshotConsistent begins the backup job with the guest's filesystems
// frozen through its QEMU guest agent when want asks for it and the
// domain has the agent's channel: freeze, begin the job (and its
// checkpoint), thaw — once each (pkg/consistency).
func (d libvirtDriver) SnapshotConsistent(ctx context.Context, rawURL, backupID string, want consistency.Want) (*Point, error) {
	t, err := d.target(rawURL)
	if err != nil {
		return nil, err
	}
	if t.Backup != "" {
		return nil, fmt.Errorf("libvirt source %q names one disk of a backup, not a domain", rawURL)
	}
	c, err := libvirt.Open(t)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, dom, err := c.Domain()
	if err != nil {
		return nil, err
	}
	disks := libvirt.BackupDisks(dom)
	if len(disks) == 0 {
		return nil, fmt.Errorf("domain %s has no disks to back up", t.Domain)
	}
	p := &Point{VM: libvirtVMConfig(raw, dom)}
	if running, err := c.Running(); err != nil {
		return nil, err
	} else if !running {
		p.Consistency = consistency.Outcome{Mode: consistency.Filesystem, Why: "the domain is shut off: nothing writes to its disks"}
		return d.offline(ctx, c, rawURL, backupID, dom, p)
	}
	var agent consistency.Agent
	if libvirt.HasAgentChannel(dom) {
		agent = c.Agent(int32(max(1, min(d.cfg.FreezeMax, 60*time.Second)/time.Second)))
	}
	name := libvirt.CheckpointName(backupID)
	since := ""
	var exp libvirt.Export
	job, err := c.BackupJob()
	if err != nil {
		return nil, err
	}
	switch {
	case d.cfg.Owns(job, backupID):
		since, exp = job.Incremental, job.Export // redelivered: the job this backup began
		// An earlier attempt froze and may have died before thawing: thaw
		// (nothing frozen is no error). What it got is not known.
		if agent != nil {
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			agent.Thaw(tctx)
			cancel()
		}
		p.Consistency = consistency.Outcome{Mode: consistency.Crash, Why: "the job was begun by an earlier attempt, whose freeze was not recorded"}
	case job != nil:
		return nil, fmt.Errorf("domain %s runs another backup job (NBD %s): retried when it ends", t.Domain, job.Export.Addr())
	default:
		cps, err := c.Checkpoints()
		if err != nil {
			return nil, err
		}
		// A checkpoint of this backup without its job (libvirtd restarted
		// between the two): it marks a point nothing read; begin again.
		if n := len(cps); n > 0 && cps[n-1] == name {
			if err := c.DeleteCheckpoint(name); err != nil {
				return nil, err
			}
			cps = cps[:n-1]
		}
		if n := len(cps); n > 0 {
			since = cps[n-1]
		}
		if err := os.MkdirAll(d.cfg.ScratchDir, 0o755); err != nil {
			return nil, fmt.Errorf("scratch directory: %w", err)
		}
		p.Consistency, err = consistency.Around(ctx, agent, want, d.cfg.FreezeMax, func(ctx context.Context) error {
			var err error
			exp, err = d.begin(c, backupID, since, name, disks)
			if err != nil && since != "" {
				// A disk added since the checkpoint has no bitmap for it: a
				// full read, and the record says why.
				p.Note = fmt.Sprintf("libvirt refused a job incremental from %s (%v): full read", since, err)
				since = ""
				exp, err = d.begin(c, backupID, "", name, disks)
			}
			return err
		})
		if errors.Is(err, consistency.ErrRequired) {
			return nil, err
		}
		if err != nil {
			return nil, fmt.Errorf("%w (QEMU must be able to create its NBD socket and scratch files in STRATA_LIBVIRT_SCRATCH_DIR=%s)", err, d.cfg.ScratchDir)
		}
	}
	for _, disk := range disks {
		p.Disks = append(p.Disks, PointDisk{Name: disk, URL: libvirt.DiskURL(rawURL, backupID, disk, since, false, exp)})
	}
	return p, nil
}

// begin starts the job: on the unix socket in the scratch directory, or,
// with STRATA_LIBVIRT_NBD_HOST, over TCP on the first free port of the
// range from one the backup id picks (jobs of other domains may hold
// some: QEMU then cannot bind, and the next is tried).
func (d libvirtDriver) begin(c *libvirt.Conn, backupID, since, name string, disks []string) (libvirt.Export, error) {
	base := d.cfg.ScratchBase(backupID)
	if d.cfg.NBDHost == "" {
		exp := libvirt.Export{Socket: d.cfg.Socket(backupID)}
		return exp, c.BeginBackup(exp, base, since, name, disks)
	}
	first, last, err := d.cfg.PortRange()
	if err != nil {
		return libvirt.Export{}, err
	}
	n := last - first + 1
	h := fnv.New32a()
	h.Write([]byte(backupID))
	start := int(h.Sum32() % uint32(n))
	for i := 0; i < n; i++ {
		exp := libvirt.Export{Host: d.cfg.NBDHost, Port: first + (start+i)%n}
		err = c.BeginBackup(exp, base, since, name, disks)
		if err == nil || !strings.Contains(err.Error(), "in use") {
			return exp, err
		}
	}
	return libvirt.Export{}, fmt.Errorf("no free port in STRATA_LIBVIRT_NBD_PORTS=%s on %s: %w", d.cfg.NBDPorts, d.cfg.NBDHost, err)
}

// Thaw thaws the domain's filesystems through its guest agent (nothing
// frozen, or no agent channel: nothing to do).
func (d libvirtDriver) Thaw(ctx context.Context, rawURL string) error {
	t, err := d.target(rawURL)
	if err != nil {
		return err
	}
	c, err := libvirt.Open(t)
	if err != nil {
		return err
	}
	defer c.Close()
	_, dom, err := c.Domain()
	if err != nil {
		return err
	}
	if !libvirt.HasAgentChannel(dom) {
		return nil
	}
	_, err = c.Agent(10).Thaw(ctx)
	return err
}

// offline plans the backup of a shut-off domain: each disk image exported
// read-only by qemu-nbd, incremental from the newest checkpoint's bitmap
// when every image holds it intact. No checkpoint is made (libvirt makes
// them through QEMU): the backup's change id is that checkpoint, whose
// bitmap keeps collecting every change for the next backup.
func (d libvirtDriver) offline(ctx context.Context, c *libvirt.Conn, rawURL, backupID string, dom *libvirtxml.Domain, p *Point) (*Point, error) {
	images, err := libvirt.ImageDisks(dom)
	if err != nil {
		return nil, fmt.Errorf("domain %s is shut off: %w", dom.Name, err)
	}
	cps, err := c.Checkpoints()
	if err != nil {
		return nil, err
	}
	since := ""
	if n := len(cps); n > 0 {
		since = cps[n-1]
		for _, img := range images {
			ok, why, err := libvirt.Bitmap(ctx, img, since)
			if err != nil {
				return nil, err
			}
			if !ok {
				p.Note = fmt.Sprintf("domain shut off; %s: full read", why)
				since = ""
				break
			}
		}
	}
	if p.Note == "" {
		p.Note = "domain shut off: read from its images"
	}
	for _, img := range images {
		if err := d.cfg.ExportImage(ctx, backupID, img, since); err != nil {
			d.cfg.StopImageExports(backupID)
			return nil, err
		}
		p.Disks = append(p.Disks, PointDisk{Name: img.Dev, URL: libvirt.DiskURL(rawURL, backupID, img.Dev, since, true, libvirt.Export{})})
	}
	return p, nil
}

// libvirtVMConfig records the domain's XML (a restore defines the new
// domain from it) and what the record shows of it.
func libvirtVMConfig(raw string, dom *libvirtxml.Domain) *contracts.VMConfig {
	vm := &contracts.VMConfig{DomainXML: raw, Firmware: "bios"}
	if dom.Memory != nil {
		vm.MemoryMB = int64(libvirt.Bytes(dom.Memory.Value, dom.Memory.Unit) >> 20)
	}
	if dom.VCPU != nil {
		vm.CPUs = int32(dom.VCPU.Value)
	}
	if os := dom.OS; os != nil && (os.Firmware == "efi" || os.Loader != nil && os.Loader.Type == "pflash") {
		vm.Firmware = "efi"
	}
	return vm
}

// Release ends the backup's job and settles the checkpoints: a verified
// backup's becomes the only one (older ones are deleted, their bitmaps
// merged away); a failed backup's is deleted, so the next backup is
// incremental from the last verified one.
func (d libvirtDriver) Release(ctx context.Context, rawURL, backupID string, kept bool) (bool, error) {
	t, err := d.target(rawURL)
	if err != nil {
		return false, err
	}
	c, err := libvirt.Open(t)
	if errors.Is(err, libvirt.ErrNoDomain) {
		return false, nil // the domain is gone, and its checkpoints with it
	}
	if err != nil {
		return false, err
	}
	defer c.Close()
	released, err := d.cfg.StopImageExports(backupID)
	if err != nil {
		return false, err
	}
	job, err := c.BackupJob()
	if err != nil {
		return false, err
	}
	if d.cfg.Owns(job, backupID) {
		if err := c.AbortJob(); err != nil {
			return false, err
		}
		if err := c.WaitNoJob(time.Minute); err != nil {
			return false, err
		}
		released = true
	}
	cps, err := c.Checkpoints()
	if err != nil {
		return released, err
	}
	// A backup of a shut-off domain made no checkpoint: then none is
	// older than its own, and the newest stays.
	name := libvirt.CheckpointName(backupID)
	own := slices.Contains(cps, name)
	for _, cp := range cps {
		if kept && own && cp < name || !kept && cp == name {
			if err := c.DeleteCheckpoint(cp); err != nil {
				return released, err
			}
			released = true
		}
	}
	return released, nil
}

func (d libvirtDriver) Open(_ context.Context, rawURL string) (Disk, error) {
	t, err := d.target(rawURL)
	if err != nil {
		return nil, err
	}
	if t.Backup == "" {
		return nil, fmt.Errorf("libvirt source %q names a domain, not one disk of a backup", rawURL)
	}
	contexts := []string{"base:allocation"}
	bitmap, socket, point := "", d.cfg.Socket(t.Backup), libvirt.CheckpointName(t.Backup)
	if t.Image {
		// qemu-nbd exports the checkpoint's bitmap under its own name,
		// and the backup's change id is that checkpoint.
		socket, bitmap, point = d.cfg.ImageSocket(t.Backup, t.Disk), t.Since, t.Since
	} else if t.Since != "" {
		bitmap = libvirt.ExportBitmap(t.Disk)
	}
	if bitmap != "" {
		contexts = append(contexts, "qemu:dirty-bitmap:"+bitmap)
	}
	if t.NBD != "" && !t.Image {
		// The job's TCP export: only on the host Strata exports on, or the
		// libvirt host itself (a message must not send a worker anywhere).
		host, _, _ := net.SplitHostPort(t.NBD)
		if host != d.cfg.NBDHost && host != t.Conn.Hostname() {
			return nil, fmt.Errorf("disk %s of backup %s: NBD export %s is neither STRATA_LIBVIRT_NBD_HOST (%q) nor the libvirt host", t.Disk, t.Backup, t.NBD, d.cfg.NBDHost)
		}
		socket = t.NBD
	}
	c, err := nbd.Dial(socket, t.Disk, contexts...)
	if err != nil {
		return nil, fmt.Errorf("disk %s of backup %s (the job's NBD export): %w", t.Disk, t.Backup, err)
	}
	if bitmap != "" && !c.HasContext("qemu:dirty-bitmap:"+bitmap) {
		c.Close()
		return nil, fmt.Errorf("disk %s of backup %s: the job exports no dirty bitmap %q", t.Disk, t.Backup, bitmap)
	}
	return &LibvirtDisk{NBD: &NBD{conn: c, bitmap: bitmap}, since: t.Since, point: point, image: t.Image}, nil
}

// LibvirtDisk is one disk of a domain's backup job.
type LibvirtDisk struct {
	*NBD
	since string // the checkpoint the job is incremental from ("": a full)
	point string // the checkpoint the job created ("" or since: a shut-off domain's image, no new checkpoint)
	image bool   // a shut-off domain's image, exported by qemu-nbd
}

// ChangedExtents: since empty → the extents holding data; since the
// checkpoint the job is incremental from → the job's dirty bitmap; any
// other point is refused with the reason (the job reads in full). The
// returned ChangeID is the checkpoint this backup created.
func (d *LibvirtDisk) ChangedExtents(ctx context.Context, since ChangeID) ([]Extent, ChangeID, error) {
	switch {
	case since == "":
		ext, _, err := d.NBD.ChangedExtents(ctx, "")
		return ext, ChangeID(d.point), err
	case string(since) == d.since:
		ext, _, err := d.NBD.ChangedExtents(ctx, since)
		return ext, ChangeID(d.point), err
	case d.since == "" && d.image:
		return nil, "", fmt.Errorf("the shut-off domain's images hold no usable bitmap of checkpoint %s of the parent backup", since)
	case d.since == "":
		return nil, "", fmt.Errorf("checkpoint %s of the parent backup is not on the domain (deleted outside Strata, or the domain redefined)", since)
	default:
		return nil, "", fmt.Errorf("the job is incremental from checkpoint %s, the parent backup is at %s", d.since, since)
	}
}

// libvirtRestore is a restore into libvirt as planned from the target
// URL and the backup's record: the new domain and its images' paths.
type libvirtRestore struct {
	rt     libvirt.RestoreTarget
	images []string // by disk, in the record's order
	disks  map[string]libvirt.DiskSource
}

func libvirtRestorePlan(rec *contracts.BackupRecord, target *url.URL) (*libvirtRestore, error) {
	rt, err := libvirt.ParseRestoreTarget(target.String())
	if err != nil {
		return nil, err
	}
	if rec.VMConfig == nil || rec.VMConfig.DomainXML == "" {
		return nil, fmt.Errorf("backup %s recorded no domain XML: restore it to files", rec.ID)
	}
	dir := rt.Dir
	if dir == "" {
		if dir, err = libvirt.ImageDir(rec.VMConfig.DomainXML); err != nil {
			return nil, err
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("image directory %s: not a directory (%v)", dir, err)
	}
	p := &libvirtRestore{rt: rt, disks: map[string]libvirt.DiskSource{}}
	for _, d := range rec.Disks {
		path := rt.ImagePath(dir, d.Name)
		p.images = append(p.images, path)
		p.disks[d.Name] = libvirt.DiskSource{File: path, Format: rt.Format}
	}
	return p, nil
}

// CheckRestore refuses, before any disk is restored, a restore into
// libvirt that could not finish: a domain of that name exists, an image
// would be overwritten, the backup has no domain XML.
func (d libvirtDriver) CheckRestore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL) error {
	p, err := libvirtRestorePlan(rec, target)
	if err != nil {
		return err
	}
	if err := libvirt.CheckImages(p.images...); err != nil {
		return err
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return errors.New("qemu-img not found: it writes the new domain's images (apt-get install qemu-utils)")
	}
	c, err := libvirt.Dial(p.rt.Target)
	if err != nil {
		return err
	}
	defer c.Close()
	if exists, err := c.Exists(p.rt.Domain); err != nil {
		return err
	} else if exists {
		return fmt.Errorf("a domain named %s exists already; restore under another name", p.rt.Domain)
	}
	return nil
}

// Restore writes the restored disks as the new domain's images (qcow2 or
// raw, sparse) and defines it from the recorded XML; started if asked.
// On failure nothing it made is left behind.
func (d libvirtDriver) Restore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL, images []Image) (err error) {
	p, err := libvirtRestorePlan(rec, target)
	if err != nil {
		return err
	}
	if len(images) != len(p.images) {
		return fmt.Errorf("%d restored images for %d disks", len(images), len(p.images))
	}
	if err := libvirt.CheckImages(p.images...); err != nil {
		return err
	}
	var made []string
	defer func() {
		if err != nil {
			for _, m := range made {
				os.Remove(m)
			}
		}
	}()
	for i, img := range images {
		out, cerr := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", p.rt.Format, img.Path, p.images[i]).CombinedOutput()
		if _, serr := os.Stat(p.images[i]); serr == nil {
			made = append(made, p.images[i])
		}
		if cerr != nil {
			return fmt.Errorf("write image %s: %v: %s", p.images[i], cerr, out)
		}
	}
	xml, err := libvirt.NewDomainXML(rec.VMConfig.DomainXML, p.rt.Domain, p.disks, true)
	if err != nil {
		return err
	}
	c, err := libvirt.Dial(p.rt.Target)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Define(xml, p.rt.Start); err != nil {
		if p.rt.Start {
			c.Undefine(p.rt.Domain)
		}
		return err
	}
	return nil
}

// BootCheck is a restore test's last step for a libvirt backup: a
// throwaway domain (strata-check-<backup id>, no network interfaces) is
// defined from the recorded XML on the restored images — served over
// NBD on loopback, so QEMU needs no access to the verifier's files —
// started, seen running for a few seconds, then destroyed and undefined.
func (d libvirtDriver) BootCheck(ctx context.Context, rec *contracts.BackupRecord, images []Image) error {
	if rec.VMConfig == nil || rec.VMConfig.DomainXML == "" {
		return fmt.Errorf("backup %s recorded no domain XML", rec.ID)
	}
	t, err := libvirt.ParseTarget(rec.Source)
	if err != nil {
		return err
	}
	if len(images) != len(rec.Disks) {
		return fmt.Errorf("%d restored images for %d disks", len(images), len(rec.Disks))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	srv := &nbd.Server{Exports: map[string]nbd.ServerExport{}, InFlight: 16, Log: slog.New(slog.DiscardHandler)}
	disks := map[string]libvirt.DiskSource{}
	for i, img := range images {
		e, err := nbd.OpenFileExport(img.Path)
		if err != nil {
			l.Close()
			return err
		}
		defer e.Close()
		name := fmt.Sprintf("disk%d", i)
		srv.Exports[name] = e
		disks[rec.Disks[i].Name] = libvirt.DiskSource{NBDExport: name, NBDHost: "127.0.0.1", NBDPort: port}
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, l) }()
	defer func() { stop(); <-served }()
	name := "strata-check-" + rec.ID
	xml, err := libvirt.NewDomainXML(rec.VMConfig.DomainXML, name, disks, false)
	if err != nil {
		return err
	}
	c, err := libvirt.Dial(t)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Undefine(name); err != nil { // left by a check that was cut off
		return err
	}
	defer c.Undefine(name)
	if err := c.Define(xml, true); err != nil {
		return err
	}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		state, err := c.State(name)
		if err != nil {
			return err
		}
		if state != "running" {
			return fmt.Errorf("check domain %s is %s, not running", name, state)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}
