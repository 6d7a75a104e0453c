package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/strata-backup/strata/internal/testserver"
)

// artifacts is where the console test keeps its screenshots
// (STRATA_ARTIFACTS, default bin/artifacts/console: outside git).
func artifacts(t *testing.T) string {
	dir := os.Getenv("STRATA_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "bin", "artifacts")
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The console in Debian's headless Chromium, on the real stack with a
// real Jaeger: an operator logs in, starts a backup of a generated disk
// from the fleet page, watches it reach verified, reads its span timeline
// (spans of all six services), browses the disk's files and downloads
// one, restores the disk to a path; a viewer sees no action button and
// its posts are refused. Each page is kept as a screenshot.
func TestConsoleInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal("chromium not found (apt-get install chromium)")
		}
		t.Skip("chromium not found")
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	const viewer, operator = "viewer-console-0123456789", "operator-console-0123456789"
	os.WriteFile(tokens, []byte("viewer "+viewer+" wallboard\noperator "+operator+" night-shift\n"), 0o600)
	restores := filepath.Join(dir, "restores")
	downloads := filepath.Join(dir, "downloads")
	os.Mkdir(restores, 0o755)
	os.Mkdir(downloads, 0o755)
	st := startStack(t, stackOptions{jaeger: true, transfers: 2, extraEnv: map[string][]string{"api": {
		"STRATA_API_TOKEN_FILE=" + tokens, "STRATA_API_RESTORE_DIR=" + restores}}})

	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "srv", "www"), 0o755)
	want := testserver.RandomBytes(9, 200<<10)
	os.WriteFile(filepath.Join(tree, "srv", "www", "index.html"), want, 0o644)
	img := filepath.Join(dir, "web-01.img")
	testserver.PartitionedImageFrom(t, img, tree)

	shots := artifacts(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("headless", "new"), chromedp.WindowSize(1366, 900), chromedp.Flag("disable-gpu", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first Do starts the browser and binds it to its context: one
	// without a deadline, so that the per-action deadlines below end
	// actions, not the browser.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			t.Fatalf("%s (at %s): %v", what, loc, err)
		}
	}
	// arrive waits for the page a click led to: a query issued while the
	// navigation was under way can wait on the old document for ever, so
	// each wait is short, and the page is loaded again between them.
	arrive := func(what string, sel chromedp.ID) {
		t.Helper()
		for i := 0; i < 10; i++ {
			c, cancel := context.WithTimeout(ctx, 3*time.Second)
			err := chromedp.Do(c, chromedp.WaitVisible(sel))
			cancel()
			if err == nil {
				return
			}
			c, cancel = context.WithTimeout(ctx, 10*time.Second)
			chromedp.Do(c, chromedp.Reload())
			cancel()
		}
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		t.Fatalf("%s: #%s never appeared (at %s)", what, sel, loc)
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	exists := func(sel string) bool {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
		if err != nil {
			t.Fatalf("count %s: %v", sel, err)
		}
		return n > 0
	}
	id := func(s string) chromedp.ID { return chromedp.ID(s) }

	// Log in as the operator; the fleet page.
	do("login", chromedp.Navigate(st.http+"/"), chromedp.WaitVisible(id("token")),
		chromedp.SendKeys(id("token"), operator), chromedp.Click(id("login")))
	arrive("login", "fleet")
	if r := text("#role"); r != "operator" {
		t.Fatalf("logged in as %q", r)
	}
	// Start a backup from the page.
	do("start a backup", chromedp.Click(chromedp.CSS("#new-backup summary")),
		chromedp.SendKeys(id("backup-vm"), "web-01"), chromedp.SendKeys(id("backup-source"), "file://"+img))
	shot("1-fleet-new-backup")
	do("submit the backup", chromedp.Click(id("backup-start")))
	arrive("the backup's page", "state")
	shot("2-backup-running")
	// Its page refreshes itself until the backup ends.
	var state string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		do("reload", chromedp.Reload())
		arrive("reload", "state")
		if state = text("#state"); state == "verified" || state == "failed" {
			break
		}
	}
	if state != "verified" {
		t.Fatalf("backup ended %q: %s", state, text("main"))
	}
	backupID := text("#backup-id")
	// The span timeline: every service's spans, from Jaeger.
	var svcText string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		do("reload for spans", chromedp.Reload())
		arrive("reload for spans", "state")
		if exists("#services") {
			if svcText = text("#services"); strings.Count(svcText, "strata-") >= len(services) {
				break
			}
		}
	}
	for _, s := range services {
		if !strings.Contains(svcText, "strata-"+s) {
			t.Errorf("timeline lacks spans of strata-%s: %q", s, svcText)
		}
	}
	if !exists("svg.timeline rect") || !exists("#trace-link") {
		t.Error("no timeline drawn or no link to the trace")
	}
	shot("3-backup-verified-timeline")

	// Browse the disk's files and download one.
	do("browse", chromedp.Click(chromedp.CSS("a.browse")))
	arrive("browse", "volumes")
	shot("4-files-volumes")
	do("open the ext4 volume", chromedp.Click(chromedp.Search(`//table[@id="volumes"]//tr[td[2][text()="ext4"]]//a`)))
	arrive("the volume", "entries")
	do("open srv", chromedp.Click(chromedp.Search(`//a[@class="dir" and text()="srv/"]`)))
	arrive("srv", "entries")
	do("open www", chromedp.Click(chromedp.Search(`//a[@class="dir" and text()="www/"]`)))
	arrive("www", "entries")
	do("see index.html", chromedp.WaitVisible(chromedp.Search(`//a[@class="file" and text()="index.html"]`)))
	shot("5-files-directory")
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads}); err != nil {
		t.Fatalf("download behaviour: %v", err)
	}
	do("download", chromedp.Click(chromedp.Search(`//a[@class="file" and text()="index.html"]`)))
	var got []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got, err = os.ReadFile(filepath.Join(downloads, "index.html")); err == nil && len(got) == len(want) {
			break
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes, want the file's %d (equal %v)", len(got), len(want), bytes.Equal(got, want))
	}

	// Restore the disk to a path; its sha256 is the source's.
	do("back to the backup", chromedp.Navigate(st.http+"/ui/vms/web-01/backups/"+backupID), chromedp.WaitVisible(id("restore-path")),
		chromedp.SendKeys(id("restore-path"), "web-01-restored.img"), chromedp.Click(id("restore")))
	c, cancel := context.WithTimeout(ctx, time.Minute) // a POST: not to be loaded again
	if err := chromedp.Do(c, chromedp.WaitVisible(id("message"))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	cancel()
	shot("6-restored")
	if m := text("#message"); !strings.Contains(m, "web-01-restored.img") {
		t.Fatalf("restore said %q", m)
	}
	if a, b := sha256File(t, filepath.Join(restores, "web-01-restored.img")), sha256File(t, img); a != b {
		t.Fatalf("restored sha256 %s, source %s", a, b)
	}
	// A fleet with more to show: web-01 under a policy, db-01 never
	// backed up within its RPO, mail-01's backup failed (its source is
	// gone).
	st.mustCLI("policy", "set", "--vm", "web-01", "--source", "file://"+img, "--schedule", "0 2 * * *", "--rpo", "26h")
	st.mustCLI("policy", "set", "--vm", "db-01", "--source", "file://"+img, "--schedule", "@every 24h", "--rpo", "1s")
	st.cli("backup", "--vm", "mail-01", "--source", "file://"+filepath.Join(dir, "gone.img"), "--wait")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		do("fleet after", chromedp.Navigate(st.http+"/"))
		arrive("fleet after", "fleet")
		if exists(`tr.red[data-vm="mail-01"]`) && exists(`tr.red[data-vm="db-01"]`) && exists(`tr.green[data-vm="web-01"]`) {
			break
		}
	}
	for _, sel := range []string{`tr.green[data-vm="web-01"]`, `tr.red[data-vm="db-01"]`, `tr.red[data-vm="mail-01"]`, "#runs td a"} {
		if !exists(sel) {
			t.Errorf("the fleet page lacks %s", sel)
		}
	}
	shot("7-fleet")
	do("the VM's chain", chromedp.Navigate(st.http+"/ui/vms/web-01"))
	arrive("the VM's chain", "chain")
	if !exists("svg.bytes rect") {
		t.Error("no bytes chart on the VM page")
	}
	shot("8-vm")

	// A viewer: no action buttons, and its posts are refused.
	do("log out", chromedp.Click(chromedp.CSS("header .who button")))
	arrive("log out", "token")
	do("log in as a viewer", chromedp.SendKeys(id("token"), viewer), chromedp.Click(id("login")))
	arrive("log in as a viewer", "fleet")
	if r := text("#role"); r != "viewer" {
		t.Fatalf("logged in as %q", r)
	}
	if exists("#new-backup") || exists("#backup-start") {
		t.Error("a viewer sees the backup form")
	}
	shot("9-fleet-viewer")
	do("viewer's backup page", chromedp.Navigate(st.http+"/ui/vms/web-01/backups/"+backupID))
	arrive("viewer's backup page", "state")
	if exists("#restore") || exists("#verify") || exists("#backup-now") {
		t.Error("a viewer sees action buttons on the backup page")
	}
	status, err := chromedp.Run(ctx, chromedp.Evaluate[int](`fetch('/ui/backup', {method: 'POST', body: new URLSearchParams({vm: 'x', source: 'file:///etc/passwd'})}).then(r => r.status)`,
		chromedp.EvalAwaitPromise))
	if err != nil || status != http.StatusForbidden {
		t.Errorf("viewer's form post: %d %v", status, err)
	}
	req, _ := http.NewRequest("POST", st.http+"/v1/backups", strings.NewReader(`{"schema":1,"vm":"x","source":"file://`+img+`"}`))
	req.Header.Set("Authorization", "Bearer "+viewer)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("viewer's API post: %v %v", resp.Status, err)
	}
	t.Logf("screenshots in %s", shots)
}
