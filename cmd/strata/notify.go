package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/notify"
)

func newNotifyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "notify", Short: "job reports: where each backup's report goes (e-mail, signed webhook) and when", Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, errors.New("notify needs set, ls or rm")}
		}}
	cmd.AddCommand(newNotifySetCmd(), newNotifyLsCmd(), newNotifyRmCmd())
	return cmd
}

func newNotifySetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "set NAME", Short: "add or change a notification target", Args: usage(cobra.ExactArgs(1)),
		Example: `  strata notify set ops --smtp mail.example.org:587 --user strata --password-file smtp.pw \
      --from strata@example.org --to ops@example.org --on failure
  strata notify set chat --webhook https://hooks.example.org/strata --secret-file hook.key --on always --vm 'web-*'`}
	fs := cmd.Flags()
	var t contracts.NotifyTarget
	fs.StringVar(&t.SMTP, "smtp", "", "SMTP server host:port (an e-mail target)")
	fs.StringVar(&t.TLS, "tls", "starttls", "SMTP: starttls (required of the server), tls (implicit, port 465) or none (loopback only)")
	fs.StringVar(&t.User, "user", "", "SMTP: user for AUTH PLAIN")
	fs.StringVar(&t.PasswordFile, "password-file", "", "SMTP: the password's file name in the api service's STRATA_NOTIFY_SECRETS_DIR")
	fs.StringVar(&t.From, "from", "", "SMTP: sender address")
	fs.StringSliceVar(&t.To, "to", nil, "SMTP: recipients (comma-separated or repeated)")
	fs.StringVar(&t.URL, "webhook", "", "webhook URL the JSON report is POSTed to")
	fs.StringVar(&t.SecretFile, "secret-file", "", "webhook: the HMAC key's file name in STRATA_NOTIFY_SECRETS_DIR (X-Strata-Signature: sha256=…)")
	fs.StringSliceVar(&t.On, "on", []string{"failure"}, "outcomes reported: failure, warning, success; or always, never")
	fs.StringVar(&t.VMs, "vm", "", "only VMs matching this glob (default: all)")
	asJSON := fs.Bool("json", false, "print the stored target as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		t.Schema, t.Name, t.UpdatedAt = contracts.SchemaVersion, args[0], time.Now().UTC()
		switch {
		case t.SMTP != "" && t.URL != "":
			return exitError{2, errors.New("a target is --smtp or --webhook, not both")}
		case t.SMTP != "":
			t.Kind = "smtp"
		case t.URL != "":
			t.Kind, t.TLS = "webhook", ""
		default:
			return exitError{2, errors.New("notify set needs --smtp or --webhook")}
		}
		t.Normalize()
		if err := t.Validate(); err != nil {
			return exitError{2, err}
		}
		ctx := cmd.Context()
		store, done, err := notifyTargets(ctx)
		if err != nil {
			return err
		}
		defer done()
		if err := store.Put(ctx, &t); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(t)
		}
		fmt.Printf("notification target %s set: %s on %s\n", t.Name, t.Kind, strings.Join(t.On, ", "))
		return nil
	}
	return cmd
}

func newNotifyLsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Short: "list notification targets", Args: usage(cobra.NoArgs)}
	asJSON := cmd.Flags().Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		store, done, err := notifyTargets(ctx)
		if err != nil {
			return err
		}
		defer done()
		list, bad, err := store.List(ctx)
		if err != nil {
			return err
		}
		for _, b := range bad {
			fmt.Fprintf(os.Stderr, "strata: unreadable target %s\n", b)
		}
		if *asJSON {
			return printJSON(append([]contracts.NotifyTarget{}, list...))
		}
		tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tON\tVMS\tTO")
		for _, t := range list {
			to := t.URL
			if t.Kind == "smtp" {
				to = strings.Join(t.To, ",") + " via " + t.SMTP
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, t.Kind, strings.Join(t.On, ","), cmpOrDash(t.VMs), to)
		}
		return tw.Flush()
	}
	return cmd
}

func newNotifyRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm NAME", Short: "remove a notification target", Args: usage(cobra.ExactArgs(1))}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		store, done, err := notifyTargets(ctx)
		if err != nil {
			return err
		}
		defer done()
		if err := store.Delete(ctx, args[0]); err != nil {
			if errors.Is(err, notify.ErrNotFound) {
				return exitError{1, err}
			}
			return err
		}
		fmt.Printf("notification target %s removed\n", args[0])
		return nil
	}
	return cmd
}

// notifyTargets opens the notification targets; done closes the
// connection.
func notifyTargets(ctx context.Context) (*notify.Store, func(), error) {
	c, err := connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	store, err := notify.Open(ctx, c.bus.JS)
	if err != nil {
		c.close()
		return nil, nil, err
	}
	return store, c.close, nil
}
