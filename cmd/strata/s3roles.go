package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/s3roles"
)

func newS3RolesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "s3-roles --dir DIR [--apply]", Short: "one S3 credential per service and a bucket policy of least privilege (only merge and dedup delete)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	dir := fs.String("dir", "", "directory holding a credential file per role (made when absent, kept when present); without --apply, policy.json is written there too")
	apply := fs.Bool("apply", false, "with the store owner's credential (STRATA_S3_*): create the accounts and the bucket, and set the policy")
	accounts := fs.String("accounts", "versitygw", "how --apply creates the accounts: versitygw (its admin API) or none (made by you in the store's IAM)")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *dir == "" {
			return exitError{2, fmt.Errorf("--dir is required")}
		}
		if *accounts != "versitygw" && *accounts != "none" {
			return exitError{2, fmt.Errorf("--accounts %q: want versitygw or none", *accounts)}
		}
		var c runtime.Common
		if err := runtime.Load(&c); err != nil {
			return exitError{2, err}
		}
		keys, err := s3roles.Generate(*dir)
		if err != nil {
			return err
		}
		policy, err := s3roles.Policy(c.S3Bucket, keys)
		if err != nil {
			return err
		}
		abs, _ := filepath.Abs(*dir)
		var policyPath string
		if !*apply {
			// For a store whose accounts and policy are made by hand; --apply
			// may run on a read-only mount of the directory (compose's
			// s3-setup).
			policyPath = filepath.Join(abs, "policy.json")
			if err := os.WriteFile(policyPath, policy, 0o644); err != nil {
				return err
			}
		} else {
			if c.S3Endpoint == "" {
				return exitError{2, fmt.Errorf("--apply needs STRATA_S3_ENDPOINT and the store owner's STRATA_S3_ACCESS_KEY/STRATA_S3_SECRET_KEY")}
			}
			// The owner's keys from the two variables, never a service's file.
			c.S3CredentialsFile = ""
			if *accounts == "versitygw" {
				root := s3roles.Key{Access: c.S3AccessKey, Secret: c.S3SecretKey}
				if err := s3roles.CreateVersityAccounts(ctx, c.S3Endpoint, c.S3Region, root, keys); err != nil {
					return fmt.Errorf("s3-roles: %w", err)
				}
			}
			store, err := c.OpenS3(ctx, false)
			if err != nil {
				return fmt.Errorf("s3-roles: %w", err)
			}
			if err := store.SetBucketPolicy(ctx, policy); err != nil {
				return fmt.Errorf("s3-roles: %w", err)
			}
		}
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"dir": abs, "policy": policyPath, "keys": keys, "applied": *apply, "bucket": c.S3Bucket})
		}
		fmt.Printf("credentials in %s (one %s per role: a service reads its own with STRATA_S3_CREDENTIALS_FILE)\n", abs, s3roles.File("<role>"))
		if *apply {
			fmt.Printf("accounts, bucket %s and its policy set at %s\n", c.S3Bucket, c.S3Endpoint)
		} else {
			fmt.Printf("bucket policy for %s in %s (strata s3-roles --apply sets it, with versitygw's accounts)\n", c.S3Bucket, policyPath)
		}
		return nil
	}
	return cmd
}
