package azure

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// seedShop fills the vault: three shop secrets (one disabled), one of
// another team tagged as shop's, and an untagged one.
func seedShop(e *testEnv) {
	e.vault.SetSecret("shop-db", "DB", "")
	e.vault.SetTags("shop-db", map[string]string{"team": "shop", "env": "prod"})
	e.vault.SetSecret("shop-mq", "MQ", "")
	e.vault.SetTags("shop-mq", map[string]string{"team": "shop"})
	old := e.vault.SetSecret("shop-old", "OLD", "")
	e.vault.SetTags("shop-old", map[string]string{"team": "shop"})
	e.vault.Disable("secrets", "shop-old", old)
	e.vault.SetSecret("other-x", "X", "")
	e.vault.SetTags("other-x", map[string]string{"team": "shop"})
	e.vault.SetSecret("plain", "P", "")
}

func paths(res *provider.Result) []string {
	var out []string
	for _, f := range res.Files {
		out = append(out, f.Path)
	}
	slices.Sort(out)
	return out
}

func TestSelectors(t *testing.T) {
	e := newTestEnv(t, nil)
	seedShop(e)
	for _, tc := range []struct{ objects, want string }{
		{"- {objectType: secret, objectNamePrefix: shop-}", "[shop-db shop-mq]"},
		{"- {objectType: secret, objectNameRegex: 'shop-(db|old)'}", "[shop-db]"},
		{"- {objectType: secret, objectNameRegex: 'db'}", "[]"}, // whole names only
		{"- {objectType: secret, objectTags: {team: shop}}", "[other-x shop-db shop-mq]"},
		{"- {objectType: secret, objectTags: {team: shop, env: prod}}", "[shop-db]"},
		{"- {objectType: secret, objectNamePrefix: shop-, objectTags: {team: shop}, filePermission: '0400'}\n- {objectName: plain, objectType: secret}", "[plain shop-db shop-mq]"},
		{"- {objectType: secret, objectNamePrefix: nothing-}", "[]"},
	} {
		e.fake.ResetCounts()
		res, err := e.p.Fetch(context.Background(), e.spRequest(tc.objects))
		if err != nil {
			t.Fatalf("%s: %v", tc.objects, err)
		}
		if got := fmt.Sprint(paths(res)); got != tc.want {
			t.Errorf("%s: files %s, want %s", tc.objects, got, tc.want)
		}
		for _, f := range res.Files {
			if want := map[string]string{"shop-db": "DB", "shop-mq": "MQ", "other-x": "X", "plain": "P"}[f.Path]; string(f.Contents) != want {
				t.Errorf("%s: %s holds %q", tc.objects, f.Path, f.Contents)
			}
		}
		// Five secrets at two a page: three pages, one listing per fetch
		// however many selectors, and one GET per file.
		if n := e.fake.Count("vault.secrets.listnames"); n != 3 {
			t.Errorf("%s: %d list pages, want 3", tc.objects, n)
		}
		if n := e.fake.Count("vault.secrets.get"); n != int64(len(res.Files)) {
			t.Errorf("%s: %d GETs for %d files", tc.objects, n, len(res.Files))
		}
	}
	res := e.fetch(t, e.spRequest("- {objectType: secret, objectNamePrefix: shop-, filePermission: '0400'}"))
	if res.Files[0].Mode != 0o400 || res.Versions[0].ID != "secret/shop-db" || res.Versions[0].Version == "" {
		t.Errorf("mode %o, version %+v", res.Files[0].Mode, res.Versions[0])
	}
}

func TestSelectorRotationSeesAddedAndRemoved(t *testing.T) {
	e := newTestEnv(t, nil)
	seedShop(e)
	req := e.spRequest("- {objectType: secret, objectNamePrefix: shop-}")
	if got := fmt.Sprint(paths(e.fetch(t, req))); got != "[shop-db shop-mq]" {
		t.Fatalf("files %s", got)
	}
	e.vault.SetSecret("shop-new", "NEW", "")
	e.vault.Delete("shop-mq")
	if got := fmt.Sprint(paths(e.fetch(t, req))); got != "[shop-db shop-new]" {
		t.Errorf("after adding shop-new and deleting shop-mq: files %s", got)
	}
}

func TestSelectorOverMaxFilesBeforeAnyValue(t *testing.T) {
	e := newTestEnv(t, nil)
	for i := range 7 {
		e.vault.SetSecret(fmt.Sprintf("bulk-%d", i), "v", "")
	}
	req := e.spRequest("- {objectName: bulk-0, objectType: secret, objectAlias: first}\n- {objectType: secret, objectNamePrefix: bulk-}")
	req.Limits = provider.Limits{MaxFiles: 4}
	_, err := e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.ResourceExhausted, "--max-files", `objectNamePrefix "bulk-"`, "more than 4")
	// The fourth selected name ends the listing: two pages of two, and no
	// value was read.
	if gets, pages := e.fake.Count("vault.secrets.get"), e.fake.Count("vault.secrets.listnames"); gets != 0 || pages != 2 {
		t.Errorf("%d GETs and %d list pages; want none and 2", gets, pages)
	}
}

func TestSelectorCollisions(t *testing.T) {
	e := newTestEnv(t, nil)
	seedShop(e)
	_, err := e.p.Fetch(context.Background(), e.spRequest("- {objectName: shop-db, objectType: secret}\n- {objectType: secret, objectNamePrefix: shop-}"))
	wantCode(t, err, codes.InvalidArgument, `file "shop-db"`, `objects item 0 (objectName "shop-db")`, `objectNamePrefix "shop-"`)
	_, err = e.p.Fetch(context.Background(), e.spRequest("- {objectType: secret, objectNamePrefix: shop-}\n- {objectType: secret, objectTags: {env: prod}}"))
	wantCode(t, err, codes.InvalidArgument, `file "shop-db"`, `objectNamePrefix "shop-"`, "objectTags {env=prod}")
	if n := e.fake.Count("vault.secrets.get"); n != 0 {
		t.Errorf("%d GETs for classes refused", n)
	}
	// An alias moves the named object out of the way.
	if _, err := e.p.Fetch(context.Background(), e.spRequest("- {objectName: shop-db, objectType: secret, objectAlias: db}\n- {objectType: secret, objectNamePrefix: shop-}")); err != nil {
		t.Fatal(err)
	}
}

func TestSelectorNeedsListPermission(t *testing.T) {
	e := newTestEnv(t, nil)
	seedShop(e)
	e.vault.Allow("someone-else")
	_, err := e.p.Fetch(context.Background(), e.spRequest("- {objectType: secret, objectNamePrefix: shop-}"))
	wantCode(t, err, codes.PermissionDenied, "may not list the secrets of Key Vault \"kv-test\"", `objectNamePrefix "shop-"`, "list and get permission")
}

func TestSelectorParseRejects(t *testing.T) {
	for name, in := range map[string]string{
		"with name":        "- {objectName: a, objectType: secret, objectNamePrefix: a}",
		"with alias":       "- {objectType: secret, objectNamePrefix: a, objectAlias: b}",
		"with version":     "- {objectType: secret, objectNamePrefix: a, objectVersion: abc}",
		"with history":     "- {objectType: secret, objectNamePrefix: a, objectVersionHistory: 2}",
		"optional":         "- {objectType: secret, objectNamePrefix: a, optional: true}",
		"keys":             "- {objectType: key, objectNamePrefix: a}",
		"no type":          "- {objectNamePrefix: a}",
		"bad prefix":       "- {objectType: secret, objectNamePrefix: a_b}",
		"bad regex":        "- {objectType: secret, objectNameRegex: '(a'}",
		"backreference":    "- {objectType: secret, objectNameRegex: '(a)\\1'}",
		"long regex":       "- {objectType: secret, objectNameRegex: '" + fmt.Sprintf("%0300d", 0) + "'}",
		"too many tags":    "- {objectType: secret, objectTags: {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10, k: 11, l: 12, m: 13, n: 14, o: 15, p: 16, q: 17}}",
		"unknown selector": "- {objectType: secret, objectNameGlob: 'a*'}",
	} {
		_, err := parseObjects(in, 0)
		if provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
		}
	}
}

func TestUsable(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	yes, no := true, false
	past, future := now.Add(-time.Hour), now.Add(time.Hour)
	for _, tc := range []struct {
		a    *azsecrets.SecretAttributes
		want bool
	}{
		{nil, true},
		{&azsecrets.SecretAttributes{}, true},
		{&azsecrets.SecretAttributes{Enabled: &yes, Expires: &future, NotBefore: &past}, true},
		{&azsecrets.SecretAttributes{Enabled: &no}, false},
		{&azsecrets.SecretAttributes{Expires: &past}, false},
		{&azsecrets.SecretAttributes{Expires: &now}, false},
		{&azsecrets.SecretAttributes{NotBefore: &future}, false},
	} {
		if got := usable(tc.a, now); got != tc.want {
			t.Errorf("usable(%+v) = %v, want %v", tc.a, got, tc.want)
		}
	}
}

// A tenant who controls a vault's names and writes many long regexes makes
// every listing match each name against each regex. The matching is
// charged before it runs: over the listing's allowance the fetch fails
// ResourceExhausted before any value is read, while one regex over the
// same vault is served.
func TestSelectorRegexWorkBounded(t *testing.T) {
	e := newTestEnv(t, nil)
	const names = 300
	for i := range names {
		e.vault.SetSecret(fmt.Sprintf("%s%03d", strings.Repeat("a-", 60), i), "v", "")
	}
	e.vault.SetSecret("shop-db", "DB", "")
	slow := strings.Repeat(`(\w|-)*`, 36) + "x" // 253 bytes, tens of microseconds a name
	var items strings.Builder
	for i := range 16 {
		fmt.Fprintf(&items, "- {objectType: secret, objectNameRegex: '%s%d'}\n", slow, i)
	}
	_, err := e.p.Fetch(context.Background(), e.spRequest(items.String()))
	wantCode(t, err, codes.ResourceExhausted, "objectNameRegex", "objectNamePrefix")
	if n := e.fake.Count("vault.secrets.get"); n != 0 {
		t.Errorf("%d GETs for a class refused", n)
	}
	res, err := e.p.Fetch(context.Background(), e.spRequest("- {objectType: secret, objectNameRegex: 'shop-(db|mq)'}\n"))
	if err != nil || fmt.Sprint(paths(res)) != "[shop-db]" {
		t.Fatalf("one regex over the same vault: %v %v", err, res)
	}
}
