// Package libvirt drives a libvirt host for backups of its domains:
// pull-mode backup jobs (virDomainBackupBegin) that export a point in
// time of every disk over NBD, checkpoints (persistent dirty bitmaps tied
// to that point) so the next backup reads only what changed, and domains
// defined from a recorded XML for restores. It talks libvirt's RPC
// protocol in pure Go (github.com/digitalocean/go-libvirt, no cgo) and
// reads and writes domain XML with libvirt.org/go/libvirtxml.
package libvirt

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// Settings of libvirt sources (prefix STRATA_).
type Settings struct {
	// ScratchDir holds, per running backup, the NBD socket of its job and
	// the scratch files QEMU keeps the point-in-time copies of blocks
	// the guest overwrites while the backup reads. On the libvirt host;
	// QEMU must be able to write it, and Strata's snapshotter and transfer
	// workers to connect to sockets in it.
	ScratchDir string `envconfig:"LIBVIRT_SCRATCH_DIR" default:"/var/lib/strata/libvirt"`
	// FreezeMax bounds how long a guest's filesystems stay frozen for a
	// snapshot: at it they are thawed, whatever the snapshot call is
	// doing (pkg/consistency).
	FreezeMax time.Duration `envconfig:"FREEZE_MAX" default:"10s"`
	// NBDHost, when set, makes backup jobs export their disks over TCP on
	// this address of the libvirt host (QEMU listens on it, transfer
	// workers on other hosts connect to it) instead of a unix socket in
	// ScratchDir, on a port of NBDPorts. A worker connects only to this
	// host or to the host of an ssh source's URL.
	NBDHost  string `envconfig:"LIBVIRT_NBD_HOST"`
	NBDPorts string `envconfig:"LIBVIRT_NBD_PORTS" default:"10809-10872"`
}

// PortRange parses NBDPorts ("FIRST-LAST").
func (c Settings) PortRange() (first, last int, err error) {
	a, b, ok := strings.Cut(c.NBDPorts, "-")
	first, err1 := strconv.Atoi(a)
	last, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || first < 1 || last > 65535 || first > last {
		return 0, 0, fmt.Errorf("STRATA_LIBVIRT_NBD_PORTS=%q: want FIRST-LAST, e.g. 10809-10872", c.NBDPorts)
	}
	return first, last, nil
}

// Export is where a backup job's NBD server listens: a unix socket, or
// (Host) TCP.
type Export struct {
	Socket string
	Host   string
	Port   int
}

// Addr is the address nbd.Dial takes.
func (e Export) Addr() string {
	if e.Host != "" {
		return net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
	}
	return e.Socket
}

// ScratchBase is the prefix of a backup's scratch files (and of its
// socket): what tells its job from any other on the domain.
func (c Settings) ScratchBase(backupID string) string {
	return filepath.Join(c.ScratchDir, backupID)
}

// Owns reports whether the job is the one backupID began.
func (c Settings) Owns(j *Job, backupID string) bool {
	if j == nil {
		return false
	}
	return j.Export.Socket != "" && j.Export.Socket == c.Socket(backupID) ||
		j.Scratch != "" && strings.HasPrefix(j.Scratch, c.ScratchBase(backupID)+"-")
}

// CheckpointPrefix starts the name of every checkpoint Strata makes:
// "strata-" + backup id. Backup ids are UUIDv7, so names sort by time.
const CheckpointPrefix = "strata-"

// CheckpointName is the checkpoint a backup creates.
func CheckpointName(backupID string) string { return CheckpointPrefix + backupID }

// Target is what a libvirt source URL names:
//
//	libvirt+unix:///system/web-01                  the local system daemon
//	libvirt+unix:///session/web-01?socket=/path    a daemon on another socket
//	libvirt+ssh://root@host/system/web-01[?keyfile=PATH]   a remote host over SSH
//	…?backup=ID&disk=vda[&since=CHECKPOINT]        one disk of a backup (planned by the snapshotter)
//
// qemu+unix and qemu+ssh are accepted as aliases.
type Target struct {
	Conn   *url.URL // the connection: qemu+unix:///system?socket=…
	Domain string
	// One disk of a backup: of its job, or (Image) of a shut-off domain's
	// image exported by qemu-nbd.
	Backup, Disk, Since string
	// NBD is the job's TCP export (host:port) when it has one.
	NBD   string
	Image bool
}

var (
	// Compiled on first use: {0,127} alone cost every run of the CLI a
	// few milliseconds of start-up (GODEBUG=inittrace=1).
	namePattern   = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	diskPattern   = lazyRegexp(`^[a-z][a-z0-9]{1,15}$`)
	backupPattern = lazyRegexp(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// Schemes are the URL schemes of libvirt sources.
var Schemes = []string{"libvirt+unix", "libvirt+ssh", "qemu+unix", "qemu+ssh"}

// ParseTarget reads a libvirt source URL, refusing anything it would not
// pass on safely: only known options, absolute clean socket paths,
// domain, disk and backup names of a strict form.
func ParseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, fmt.Errorf("libvirt source %q: %w", raw, err)
	}
	usage := fmt.Errorf("libvirt source %q: want libvirt+unix:///system/DOMAIN[?socket=PATH] or libvirt+ssh://[USER@]HOST/system/DOMAIN", raw)
	transport, ok := strings.CutPrefix(u.Scheme, "libvirt+")
	if !ok {
		transport, ok = strings.CutPrefix(u.Scheme, "qemu+")
	}
	if !ok || (transport != "unix" && transport != "ssh") {
		return Target{}, usage
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 || (parts[0] != "system" && parts[0] != "session") || !namePattern().MatchString(parts[1]) {
		return Target{}, usage
	}
	conn := &url.URL{Scheme: "qemu+" + transport, Path: "/" + parts[0]}
	q, cq := u.Query(), url.Values{}
	t := Target{Domain: parts[1], Backup: q.Get("backup"), Disk: q.Get("disk"), Since: q.Get("since"), Image: q.Get("image") == "1"}
	for k, v := range q {
		if len(v) != 1 {
			return Target{}, fmt.Errorf("libvirt source %q: option %s given %d times", raw, k, len(v))
		}
		switch k {
		case "socket", "keyfile":
			if p := v[0]; !path.IsAbs(p) || path.Clean(p) != p {
				return Target{}, fmt.Errorf("libvirt source %q: %s must be an absolute clean path", raw, k)
			}
			cq.Set(k, v[0])
		case "backup", "disk", "since":
		case "nbd":
			host, port, err := net.SplitHostPort(v[0])
			if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 || host == "" {
				return Target{}, fmt.Errorf("libvirt source %q: nbd=HOST:PORT", raw)
			}
			t.NBD = v[0]
		case "image":
			if v[0] != "1" {
				return Target{}, fmt.Errorf("libvirt source %q: image=1 or nothing", raw)
			}
		default:
			return Target{}, fmt.Errorf("libvirt source %q: unknown option %q (socket, keyfile)", raw, k)
		}
	}
	switch transport {
	case "unix":
		if u.Host != "" {
			return Target{}, fmt.Errorf("libvirt source %q: a unix socket is local: libvirt+unix:///system/DOMAIN", raw)
		}
		if cq.Has("keyfile") {
			return Target{}, fmt.Errorf("libvirt source %q: keyfile is an ssh option", raw)
		}
	case "ssh":
		if u.Host == "" {
			return Target{}, usage
		}
		// go-libvirt speaks SSH itself (golang.org/x/crypto/ssh), with
		// the system's defaults: ~/.ssh/known_hosts, the user's keys.
		conn.Host, conn.User = u.Host, u.User
		if cq.Has("socket") {
			return Target{}, fmt.Errorf("libvirt source %q: socket is a unix option", raw)
		}
	}
	conn.RawQuery = cq.Encode()
	t.Conn = conn
	if (t.Backup != "" || t.Disk != "" || t.Since != "" || t.Image) &&
		(!backupPattern().MatchString(t.Backup) || !diskPattern().MatchString(t.Disk) ||
			t.Since != "" && !backupPattern().MatchString(strings.TrimPrefix(t.Since, CheckpointPrefix))) {
		return Target{}, fmt.Errorf("libvirt source %q: a disk of a backup is ?backup=UUID&disk=NAME[&since=strata-UUID]", raw)
	}
	return t, nil
}

// DiskURL is the URL of one disk of a backup, for the transfer workers:
// of its job, or with image of a shut-off domain's image; since is the
// checkpoint it is incremental from ("" for a full).
func DiskURL(source, backupID, disk, since string, image bool, exp Export) string {
	u, _ := url.Parse(source)
	q := u.Query()
	q.Set("backup", backupID)
	q.Set("disk", disk)
	if exp.Host != "" {
		q.Set("nbd", exp.Addr())
	}
	if since != "" {
		q.Set("since", since)
	}
	if image {
		q.Set("image", "1")
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Socket is where the NBD server of a backup's job listens.
func (c Settings) Socket(backupID string) string {
	return filepath.Join(c.ScratchDir, backupID+".sock")
}

// ExportBitmap is the name under which a job exports the changes of disk
// since its incremental checkpoint (libvirt's default).
func ExportBitmap(disk string) string { return "backup-" + disk }

// Conn is a connection to a libvirt daemon, on one domain.
type Conn struct {
	l   *golibvirt.Libvirt
	dom golibvirt.Domain
	t   Target
}

// ErrNoDomain: the daemon has no domain of that name.
var ErrNoDomain = errors.New("no such domain")

// Dial connects to the daemon of t.
func Dial(t Target) (*Conn, error) {
	l, err := golibvirt.ConnectToURI(t.Conn)
	if err != nil {
		return nil, fmt.Errorf("connect to libvirt %s: %w", t.Conn.Redacted(), err)
	}
	return &Conn{l: l, t: t}, nil
}

// Open connects to the daemon of t and finds its domain.
func Open(t Target) (*Conn, error) {
	c, err := Dial(t)
	if err != nil {
		return nil, err
	}
	if c.dom, err = c.l.DomainLookupByName(t.Domain); err != nil {
		c.Close()
		if isCode(err, golibvirt.ErrNoDomain) {
			return nil, fmt.Errorf("domain %s on %s: %w", t.Domain, t.Conn.Redacted(), ErrNoDomain)
		}
		return nil, fmt.Errorf("domain %s: %w", t.Domain, err)
	}
	return c, nil
}

func isCode(err error, code golibvirt.ErrorNumber) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && e.Code == uint32(code)
}

// Close ends the connection.
func (c *Conn) Close() error { return c.l.Disconnect() }

// Domain returns the domain's XML, raw and parsed.
func (c *Conn) Domain() (string, *libvirtxml.Domain, error) {
	raw, err := c.l.DomainGetXMLDesc(c.dom, golibvirt.DomainXMLSecure)
	if err != nil {
		return "", nil, fmt.Errorf("domain %s XML: %w", c.t.Domain, err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(raw); err != nil {
		return "", nil, fmt.Errorf("domain %s XML: %w", c.t.Domain, err)
	}
	return raw, &d, nil
}

// Running reports whether the domain runs (or is paused: QEMU is there
// to run a backup job either way).
func (c *Conn) Running() (bool, error) {
	state, _, err := c.l.DomainGetState(c.dom, 0)
	if err != nil {
		return false, fmt.Errorf("domain %s state: %w", c.t.Domain, err)
	}
	return state == int32(golibvirt.DomainRunning) || state == int32(golibvirt.DomainPaused), nil
}

// BackupDisks are the domain's disks a backup reads: every disk device
// (not CD-ROMs or floppies) with a target name, in the domain's order.
func BackupDisks(d *libvirtxml.Domain) []string {
	var out []string
	for _, disk := range backedUp(d) {
		out = append(out, disk.Target.Dev)
	}
	return out
}

// backedUp returns the domain's disks a backup reads.
func backedUp(d *libvirtxml.Domain) []libvirtxml.DomainDisk {
	var out []libvirtxml.DomainDisk
	if d.Devices == nil {
		return nil
	}
	for _, disk := range d.Devices.Disks {
		if (disk.Device == "" || disk.Device == "disk") && disk.Target != nil && diskPattern().MatchString(disk.Target.Dev) {
			out = append(out, disk)
		}
	}
	return out
}

// Checkpoints lists the domain's checkpoints Strata made, oldest first.
func (c *Conn) Checkpoints() ([]string, error) {
	all, _, err := c.l.DomainListAllCheckpoints(c.dom, 1, 0)
	if err != nil {
		return nil, fmt.Errorf("checkpoints of %s: %w", c.t.Domain, err)
	}
	var out []string
	for _, cp := range all {
		if strings.HasPrefix(cp.Name, CheckpointPrefix) {
			out = append(out, cp.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// DeleteCheckpoint deletes one checkpoint; libvirt merges its bitmap into
// its parent's, so the changes it held are not lost to older points. A
// checkpoint already gone is not an error.
func (c *Conn) DeleteCheckpoint(name string) error {
	cp, err := c.l.DomainCheckpointLookupByName(c.dom, name, 0)
	if isCode(err, golibvirt.ErrNoDomainCheckpoint) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s of %s: %w", name, c.t.Domain, err)
	}
	if err := c.l.DomainCheckpointDelete(cp, 0); err != nil && !isCode(err, golibvirt.ErrNoDomainCheckpoint) {
		return fmt.Errorf("delete checkpoint %s of %s: %w", name, c.t.Domain, err)
	}
	return nil
}

// Job is the domain's running backup job, as libvirt describes it.
type Job struct {
	Export      Export   // its NBD server
	Scratch     string   // the scratch file of its first disk
	Incremental string   // the checkpoint it is incremental from
	Disks       []string // the disks it exports
}

// BackupJob returns the domain's running backup job, or nil.
func (c *Conn) BackupJob() (*Job, error) {
	raw, err := c.l.DomainBackupGetXMLDesc(c.dom, 0)
	if isCode(err, golibvirt.ErrNoDomainBackup) || isCode(err, golibvirt.ErrOperationInvalid) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("backup job of %s: %w", c.t.Domain, err)
	}
	var b libvirtxml.DomainBackup
	if err := b.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("backup job of %s: %w", c.t.Domain, err)
	}
	j := &Job{Incremental: b.Incremental}
	if b.Pull != nil {
		if srv := b.Pull.Server; srv != nil && srv.UNIX != nil {
			j.Export.Socket = srv.UNIX.Socket
		} else if srv != nil && srv.TCP != nil {
			j.Export.Host, j.Export.Port = srv.TCP.Name, int(srv.TCP.Port)
		}
		if b.Pull.Disks != nil {
			for _, d := range b.Pull.Disks.Disks {
				if d.Backup != "no" {
					j.Disks = append(j.Disks, d.Name)
				}
				if d.Scratch != nil && d.Scratch.File != nil && j.Scratch == "" {
					j.Scratch = d.Scratch.File.File
				}
			}
		}
	}
	return j, nil
}

// BeginBackup starts a pull-mode backup job exporting disks over NBD on
// socket (scratch files beside it), incremental from the checkpoint
// since ("" for a full), and creates the checkpoint name in the same call.
func (c *Conn) BeginBackup(exp Export, base, since, name string, disks []string) error {
	srv := &libvirtxml.DomainBackupPullServer{UNIX: &libvirtxml.DomainBackupPullServerUNIX{Socket: exp.Socket}}
	if exp.Host != "" {
		srv = &libvirtxml.DomainBackupPullServer{TCP: &libvirtxml.DomainBackupPullServerTCP{Name: exp.Host, Port: uint(exp.Port)}}
	}
	pull := &libvirtxml.DomainBackupPull{Server: srv, Disks: &libvirtxml.DomainBackupPullDisks{}}
	cp := libvirtxml.DomainCheckpoint{Name: name, Disks: &libvirtxml.DomainCheckpointDisks{}}
	for _, d := range disks {
		pull.Disks.Disks = append(pull.Disks.Disks, libvirtxml.DomainBackupPullDisk{Name: d, Backup: "yes",
			Scratch: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: base + "-" + d + ".scratch"}}})
		cp.Disks.Disks = append(cp.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: d, Checkpoint: "bitmap"})
	}
	backupXML, err := (&libvirtxml.DomainBackup{Incremental: since, Pull: pull}).Marshal()
	if err != nil {
		return err
	}
	cpXML, err := cp.Marshal()
	if err != nil {
		return err
	}
	if err := c.l.DomainBackupBegin(c.dom, backupXML, golibvirt.OptString{cpXML}, 0); err != nil {
		return fmt.Errorf("begin backup of %s: %w", c.t.Domain, err)
	}
	return nil
}

// AbortJob ends the domain's backup job (a pull-mode job ends only so);
// no job is not an error.
func (c *Conn) AbortJob() error {
	err := c.l.DomainAbortJob(c.dom)
	if err == nil || isCode(err, golibvirt.ErrOperationInvalid) {
		return nil
	}
	return fmt.Errorf("end backup job of %s: %w", c.t.Domain, err)
}

// WaitNoJob waits until the domain runs no backup job.
func (c *Conn) WaitNoJob(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		j, err := c.BackupJob()
		if err != nil || j == nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backup job of %s still running after %v", c.t.Domain, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Bytes is a libvirt memory size in bytes (unit as libvirt writes it:
// KiB when none is given).
func Bytes(v uint, unit string) uint64 {
	shift := map[string]uint{"b": 0, "bytes": 0, "k": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30, "T": 40, "TiB": 40}
	mult := map[string]uint64{"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
	if m, ok := mult[unit]; ok {
		return uint64(v) * m
	}
	s, ok := shift[unit]
	if !ok {
		s = 10
	}
	return uint64(v) << s
}
