// Package natsauth is what NATS needs once a deployment spans hosts: TLS,
// and one credential per service (an nkey: the server keeps only its
// public half, the service signs a nonce with its seed, no secret crosses
// the wire) whose subject permissions allow what that service does and
// nothing else.
//
// The rule the roles follow: every service may read every stream's
// messages and every bucket (JetStream's get API; consumers only on the
// buckets and the streams it consumes or reads); it writes only the
// subjects it owns — its events, the KV buckets whose state it owns,
// acknowledgements on the streams it consumes, requests to the endpoints
// it calls. A transfer worker consumes segments and publishes results and
// packs; it cannot request a backup, write the catalog, touch the GC lock,
// or create or delete a consumer on the backups stream. Only the
// setup role (the scheduler in compose) creates and updates streams.
//
// Generate writes everything a deployment needs into one directory: a CA,
// a server certificate for the NATS nodes, the server's authorization
// block, and a seed file per role (the CLI's role, "admin", may do
// anything: it is the operator's).
package natsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/strata-backup/strata/contracts"
)

// Role is one credential's permissions.
type Role struct {
	Name string
	// Consumes: streams this role takes messages from (pull and ack).
	Consumes []string
	// Reads: other streams it reads through a consumer of its own
	// (ordered, no acks).
	Reads []string
	// Publishes: subjects (wildcards allowed) it publishes events or
	// requests to.
	Publishes []string
	// Writes: KV buckets whose state it owns.
	Writes []string
	// Serves: endpoint subjects it answers (NATS micro).
	Serves []string
	// Setup: it creates and updates the streams and buckets.
	Setup bool
	// All: no restriction (the operator's CLI).
	All bool
}

// Roles are the services' credentials and the operator's.
func Roles() []Role {
	outcome := []string{contracts.SubjectBackupFailed, contracts.SubjectBackupVerified}
	return []Role{
		{Name: "scheduler", Setup: true, Consumes: []string{contracts.StreamBackups},
			Publishes: []string{contracts.SubjectBackupRequested, contracts.SubjectVerifyJob, contracts.SubjectTrigger, contracts.SubjectBackupFailed,
				contracts.SubjectDedupGC, contracts.SubjectVerify, contracts.SubjectCheck},
			Writes: []string{contracts.BucketCatalog, contracts.BucketPolicies},
			Serves: []string{contracts.SubjectSchedulerRun, contracts.SubjectSchedulerCancel}},
		{Name: "snapshotter", Consumes: []string{contracts.StreamBackups},
			Publishes: append([]string{contracts.SubjectSegmentPrefix + ">"}, outcome...),
			Writes:    []string{contracts.BucketCatalog, contracts.BucketFreezes}},
		{Name: "transfer", Consumes: []string{contracts.StreamSegments},
			Publishes: []string{contracts.SubjectSegmentDonePrefix + ">", contracts.SubjectPackStoredPrefix + ">",
				contracts.SubjectChunkCheckedPrefix + ">", contracts.SubjectDedupMissing}},
		{Name: "merge", Consumes: []string{contracts.StreamResults, contracts.StreamBackups},
			Publishes: append([]string{contracts.SubjectBackupCommitted, contracts.SubjectPackRetained, "$JS.API.STREAM.PURGE." + contracts.StreamResults}, outcome...),
			Writes:    []string{contracts.BucketCatalog, contracts.BucketMirrors},
			Serves:    []string{contracts.SubjectMergePrune, contracts.SubjectMergeRemove}},
		{Name: "dedup", Consumes: []string{contracts.StreamPacks}, Reads: []string{contracts.StreamResults}, // GC marks running backups' results
			Publishes: []string{contracts.SubjectGCProgress},
			Writes:    []string{contracts.BucketGC, contracts.BucketGCHolds, contracts.BucketBadChunks},
			Serves:    []string{contracts.SubjectDedupMissing, contracts.SubjectDedupGC, contracts.SubjectDedupStats}},
		{Name: "verifier", Consumes: []string{contracts.StreamBackups, contracts.StreamResults},
			Publishes: append([]string{contracts.SubjectChunkCheckPrefix + ">", contracts.SubjectBackupCommitted}, outcome...),
			Writes:    []string{contracts.BucketCatalog, contracts.BucketBadChunks, contracts.BucketMirrors},
			Serves:    []string{contracts.SubjectVerify, contracts.SubjectCheck}},
		// The operator API: reads everything, asks the services' endpoints
		// (a backup, a cancel, a verification, prune, gc, statistics) and
		// edits policies; it consumes no stream and writes no record.
		{Name: "api", Consumes: []string{contracts.StreamBackups}, // recent outcomes for the console, job reports
			Publishes: []string{contracts.SubjectSchedulerRun, contracts.SubjectSchedulerCancel, contracts.SubjectVerify,
				contracts.SubjectMergePrune, contracts.SubjectDedupGC, contracts.SubjectDedupStats},
			Writes: []string{contracts.BucketPolicies, contracts.BucketNotify, contracts.BucketNotifySent}},
		{Name: "admin", All: true},
	}
}

// Permissions are a role's allowed publish and subscribe subjects.
func (r Role) Permissions() (pub, sub []string) {
	if r.All {
		return []string{">"}, []string{">"}
	}
	// Reading: JetStream's info and get APIs (any stream's messages by
	// subject or sequence), and consumers — created, pulled, deleted —
	// only on the KV buckets' streams (listing, watching) and the streams
	// the role consumes: a worker can neither read another service's
	// work queue through a consumer of its own nor delete the durable
	// consumer another service depends on.
	pub = []string{"$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
		"$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.*", "$JS.FC.>",
		"$SRV.>", contracts.SubjectDLQPrefix + ">"}
	consumers := func(stream string) {
		pub = append(pub, "$JS.API.CONSUMER.CREATE."+stream, "$JS.API.CONSUMER.CREATE."+stream+".>",
			"$JS.API.CONSUMER.DURABLE.CREATE."+stream+".>", "$JS.API.CONSUMER.INFO."+stream+".>",
			"$JS.API.CONSUMER.DELETE."+stream+".>", "$JS.API.CONSUMER.MSG.NEXT."+stream+".>")
	}
	for _, b := range contracts.Buckets { // every bucket is readable
		consumers("KV_" + b)
	}
	for _, s := range r.Reads {
		consumers(s)
	}
	for _, s := range r.Consumes {
		consumers(s)
		pub = append(pub, "$JS.ACK."+s+".>")
	}
	for _, b := range r.Writes {
		pub = append(pub, "$KV."+b+".>")
	}
	if r.Setup {
		pub = append(pub, "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*")
	}
	pub = append(pub, r.Publishes...)
	sub = append([]string{"_INBOX.>", "$SRV.>"}, r.Serves...)
	return pub, sub
}

// SeedFile is the name of role's seed file in a Generate directory.
func SeedFile(role string) string { return role + ".nk" }

// Files in a Generate directory besides the seeds.
const (
	CAFile         = "ca.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	ConfFile       = "auth.conf"    // TLS and the users: a single server
	ClusterFile    = "cluster.conf" // auth.conf and TLS between cluster nodes
)

// Generate writes a new CA, a server certificate valid for hosts (names or
// IP addresses), a seed per role and the server configuration (TLS for
// clients and routes, the users and their permissions) into dir, replacing
// what was there. certDir is where the NATS server will find the
// certificate files (the directory as mounted in its container).
func Generate(dir string, hosts []string, certDir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "Strata NATS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	// Server and client auth: the nodes' routes verify each other with it.
	srv := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "strata-nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			srv.IPAddresses = append(srv.IPAddresses, ip)
		} else if h != "" {
			srv.DNSNames = append(srv.DNSNames, h)
		}
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	var users []string
	for _, r := range Roles() {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		seed, _ := kp.Seed()
		pubKey, _ := kp.PublicKey()
		if err := os.WriteFile(filepath.Join(dir, SeedFile(r.Name)), append(seed, '\n'), 0o644); err != nil {
			return err
		}
		pub, sub := r.Permissions()
		users = append(users, fmt.Sprintf("    # %s\n    {nkey: %q, permissions: {publish: {allow: %s}, subscribe: {allow: %s}, allow_responses: true}}",
			r.Name, pubKey, list(pub), list(sub)))
	}
	conf := fmt.Sprintf(`# Written by strata nats-auth: TLS and one nkey per Strata service.
tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  timeout: 5
}
authorization {
  users: [
%s
  ]
}
`, filepath.Join(certDir, ServerCertFile), filepath.Join(certDir, ServerKeyFile), filepath.Join(certDir, CAFile), strings.Join(users, ",\n"))
	// Routes between the nodes of a cluster verify each other's
	// certificate: nothing joins the cluster without one the CA signed.
	cluster := fmt.Sprintf(`# Written by strata nats-auth: auth.conf, and TLS between the nodes of
# a cluster (routes are given on the command line).
include %q
cluster {
  name: strata
  listen: 0.0.0.0:6222
  tls {
    cert_file: %q
    key_file: %q
    ca_file: %q
    verify: true
    timeout: 5
  }
}
`, ConfFile, filepath.Join(certDir, ServerCertFile), filepath.Join(certDir, ServerKeyFile), filepath.Join(certDir, CAFile))
	for name, data := range map[string][]byte{
		CAFile:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		ServerCertFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		// Readable by the NATS container's user; the directory is the
		// deployment's secret store (make up keeps it to its owner).
		ServerKeyFile: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		ConfFile:      []byte(conf),
		ClusterFile:   []byte(cluster),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func list(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}
