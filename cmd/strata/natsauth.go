package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/natsauth"
)

func newNATSAuthCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "nats-auth --dir DIR", Short: "write TLS certificates, one nkey per service and the NATS server's authorization for a deployment across hosts", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	dir := fs.String("dir", "", "directory to write into (its files are replaced)")
	hosts := fs.String("hosts", "nats1,nats2,nats3,localhost,127.0.0.1", "names and addresses the NATS servers' certificate is valid for")
	certDir := fs.String("cert-dir", "/etc/nats/auth", "where the NATS servers find the certificate files (as mounted in their containers)")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *dir == "" {
			return exitError{2, fmt.Errorf("--dir is required")}
		}
		if err := natsauth.Generate(*dir, strings.Split(*hosts, ","), *certDir); err != nil {
			return fmt.Errorf("nats-auth: %w", err)
		}
		abs, _ := filepath.Abs(*dir)
		var roles []string
		for _, r := range natsauth.Roles() {
			roles = append(roles, r.Name)
		}
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"dir": abs, "roles": roles, "ca": filepath.Join(abs, natsauth.CAFile), "conf": filepath.Join(abs, natsauth.ConfFile)})
		}
		fmt.Printf("wrote %s: %s, %s (include it in the NATS servers' configuration) and a seed per role: %s\n", abs, natsauth.CAFile, natsauth.ConfFile, strings.Join(roles, ", "))
		fmt.Printf("a service uses STRATA_NATS_URL=tls://…, STRATA_NATS_CA_FILE=%s and STRATA_NATS_NKEY_FILE=%s/<role>.nk; the CLI the admin seed\n", filepath.Join(abs, natsauth.CAFile), abs)
		return nil
	}
	return cmd
}
