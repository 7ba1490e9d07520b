package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

func TestAudiencesSet(t *testing.T) {
	a := DefaultAudiences()
	for _, s := range []string{
		`vault=vault,""`,
		`aws=`,
		` mine = api://AzureADTokenExchange , *.example.com,api://AzureADTokenExchange`,
	} {
		if err := a.Set(s); err != nil {
			t.Fatalf("Set(%q): %v", s, err)
		}
	}
	want := `aws= gcp=*.svc.id.goog mine=api://AzureADTokenExchange,*.example.com vault=vault,""`
	if got := a.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	// Changing a copy leaves the defaults as they were.
	if got := DefaultAudiences(); !reflect.DeepEqual(got.For("aws"), []string{"sts.amazonaws.com", "pods.eks.amazonaws.com"}) {
		t.Errorf("defaults changed: %v", got.String())
	}
	for _, bad := range []string{
		"vault", "=vault", "../x=vault", "v=a b", "v=*", "v=*.", "v=a*b", "v=*.a*", `v=a"b`, "v=\x01",
		"v=" + strings.Repeat("a", maxAudienceLen+1),
	} {
		var a Audiences
		if err := a.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "\x01") {
			t.Errorf("Set(%q): error quotes a control character: %v", bad, err)
		}
	}
}

func TestAudiencesFilter(t *testing.T) {
	var a Audiences
	for _, s := range []string{`gcp=*.svc.id.goog`, `kube=""`, `none=`} {
		if err := a.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	tok := func(s string) provider.Token { return provider.Token{Token: s} }
	tokens := map[string]provider.Token{
		"":                       tok("api"),
		"my-proj.svc.id.goog":    tok("gcp"),
		".svc.id.goog":           tok("no-project"),
		"svc.id.goog":            tok("bare"),
		"my-proj.svc.id.goog.io": tok("other"),
	}
	for _, tc := range []struct {
		name          string
		fwd, withheld []string
	}{
		{"gcp", []string{"my-proj.svc.id.goog"}, []string{"", ".svc.id.goog", "my-proj.svc.id.goog.io", "svc.id.goog"}},
		{"kube", []string{""}, []string{".svc.id.goog", "my-proj.svc.id.goog", "my-proj.svc.id.goog.io", "svc.id.goog"}},
		{"none", nil, []string{"", ".svc.id.goog", "my-proj.svc.id.goog", "my-proj.svc.id.goog.io", "svc.id.goog"}},
		{"unlisted", nil, []string{"", ".svc.id.goog", "my-proj.svc.id.goog", "my-proj.svc.id.goog.io", "svc.id.goog"}},
	} {
		got, withheld := a.Filter(tc.name, tokens)
		var fwd []string
		for aud := range got {
			fwd = append(fwd, aud)
		}
		if len(fwd) != len(tc.fwd) || (len(fwd) == 1 && fwd[0] != tc.fwd[0]) {
			t.Errorf("%s: forwarded %q, want %q", tc.name, fwd, tc.fwd)
		}
		if tc.fwd == nil && got != nil {
			t.Errorf("%s: want a nil map when nothing is forwarded", tc.name)
		}
		if !reflect.DeepEqual(withheld, tc.withheld) {
			t.Errorf("%s: withheld %q, want %q", tc.name, withheld, tc.withheld)
		}
	}
}

// TestOnlyConfiguredAudiencesReachTheProvider sends a pod's three tokens (the
// API server's, Azure's and Vault's) over a real socket to providers with
// different configurations and reads what each one received.
func TestOnlyConfiguredAudiencesReachTheProvider(t *testing.T) {
	dir := t.TempDir()
	got := map[string]map[string]provider.Token{}
	attrs := map[string]bool{}
	record := func(name string) *funcProvider {
		return &funcProvider{fetch: func(_ context.Context, req *provider.Request) (*provider.Result, error) {
			got[name] = req.Tokens
			attrs[name] = req.Tokens != nil
			return &provider.Result{Files: []provider.File{{Path: "a", Contents: []byte("x")}}}, nil
		}}
	}
	for _, name := range []string{"vault", "aws", "custom", "kubeish"} {
		serve(t, sockPath(dir, name), record(name))
	}
	aud := DefaultAudiences()
	for _, s := range []string{`custom=api://AzureADTokenExchange`, `kubeish="",vault`} {
		if err := aud.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	c := New(Options{SocketDirs: []string{dir}, Audiences: &aud, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer c.Close()

	exp := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	req := &provider.Request{Pod: provider.Pod{Namespace: "ns", Name: "p", ServiceAccount: "sa"}, Tokens: map[string]provider.Token{
		"":                           {Token: "api-server-token", ExpirationTimestamp: exp},
		"api://AzureADTokenExchange": {Token: "azure-token", ExpirationTimestamp: exp},
		"vault":                      {Token: "vault-token", ExpirationTimestamp: exp},
	}}
	for _, name := range []string{"vault", "aws", "custom", "kubeish"} {
		p, _ := c.Provider(name)
		if _, err := p.Fetch(context.Background(), req); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	want := map[string][]string{
		"vault":   {"vault"},
		"aws":     nil, // no AWS audience among the pod's tokens: no tokens attribute at all
		"custom":  {"api://AzureADTokenExchange"},
		"kubeish": {"", "vault"},
	}
	for name, auds := range want {
		if len(got[name]) != len(auds) {
			t.Errorf("%s received audiences %v, want %q", name, keys(got[name]), auds)
			continue
		}
		for _, a := range auds {
			if tk, ok := got[name][a]; !ok || tk.Token != req.Tokens[a].Token || !tk.ExpirationTimestamp.Equal(exp) {
				t.Errorf("%s: token for %q missing or altered", name, a)
			}
		}
		if attrs[name] != (auds != nil) {
			t.Errorf("%s: tokens attribute present = %v, want %v", name, attrs[name], auds != nil)
		}
	}
	// The log says what was withheld, by audience name only, once.
	out := logs.String()
	for _, secret := range []string{"api-server-token", "azure-token", "vault-token"} {
		if strings.Contains(out, secret) {
			t.Fatalf("log holds a token: %s", out)
		}
	}
	if n := strings.Count(out, "provider=aws"); n != 1 {
		t.Errorf("aws withheld logged %d times, want 1:\n%s", n, out)
	}
	p, _ := c.Provider("aws")
	p.Fetch(context.Background(), req)
	if n := strings.Count(logs.String(), "provider=aws"); n != 1 {
		t.Errorf("same withheld set logged again (%d lines)", n)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func FuzzAudiencesSet(f *testing.F) {
	for _, s := range []string{`vault=vault`, `aws=sts.amazonaws.com,pods.eks.amazonaws.com`, `gcp=*.svc.id.goog`, `k=""`, `x=`, `=`, `a=*.`, "a=\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var a Audiences
		if err := a.Set(s); err != nil {
			return
		}
		// What String prints, Set reads back to the same configuration.
		var b Audiences
		for _, part := range strings.Fields(a.String()) {
			if err := b.Set(part); err != nil {
				t.Fatalf("Set(%q) of String() output: %v", part, err)
			}
		}
		if a.String() != b.String() {
			t.Fatalf("round trip %q -> %q", a.String(), b.String())
		}
	})
}
