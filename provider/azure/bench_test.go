package azure

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// BenchmarkFetchFiveSecrets publishes a 5-object volume against the fake
// with a warm client cache, as every publish after the first one does.
func BenchmarkFetchFiveSecrets(b *testing.B) {
	e := newTestEnv(b, nil)
	var objs strings.Builder
	for i := range 5 {
		e.vault.SetSecret(fmt.Sprintf("s%d", i), strings.Repeat("v", 64), "")
		fmt.Fprintf(&objs, "- {objectName: s%d, objectType: secret}\n", i)
	}
	req := e.spRequest(objs.String())
	e.fetch(b, req) // credential, token and challenge
	e.fake.ResetCounts()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.p.Fetch(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(e.fake.Count("vault"))/float64(b.N), "kv-requests/publish")
	b.ReportMetric(float64(e.fake.Count("token"))/float64(b.N), "token-requests/publish")
}

// BenchmarkFetchFiveSecretsCold builds the client and token every time (a
// new identity per publish): the cost the client cache saves.
func BenchmarkFetchFiveSecretsCold(b *testing.B) {
	e := newTestEnv(b, nil)
	var objs strings.Builder
	for i := range 5 {
		e.vault.SetSecret(fmt.Sprintf("s%d", i), strings.Repeat("v", 64), "")
		fmt.Fprintf(&objs, "- {objectName: s%d, objectType: secret}\n", i)
	}
	req := e.spRequest(objs.String())
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n++
		secret := fmt.Sprintf("secret-%d", n)
		e.fake.AddClientSecret(spClient, secret)
		req.Secrets["clientsecret"] = secret
		if _, err := e.p.Fetch(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(e.fake.Count("vault"))/float64(b.N), "kv-requests/publish")
	b.ReportMetric(float64(e.fake.Count("token"))/float64(b.N), "token-requests/publish")
}
