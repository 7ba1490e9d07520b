package provider

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// Tokens written by EncodeTokens read back the same, to the second.
func TestTokensRoundTrip(t *testing.T) {
	in := map[string]Token{
		"vault": {Token: "eyJ.a.b", ExpirationTimestamp: time.Date(2031, 5, 6, 9, 8, 9, 0, time.FixedZone("CEST", 2*3600))},
		"":      {Token: "eyJ.c.d"},
	}
	raw, err := EncodeTokens(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseTokens(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out["vault"].Token != "eyJ.a.b" || !out["vault"].ExpirationTimestamp.Equal(in["vault"].ExpirationTimestamp) ||
		out[""].Token != "eyJ.c.d" || !out[""].ExpirationTimestamp.IsZero() {
		t.Fatalf("round trip: %+v", out)
	}
}

func TestParseTokensRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ raw, msg string }{
		"not json":     {"{", "not a JSON object"},
		"array":        {"[]", "not a JSON object"},
		"null":         {"null", "not a JSON object"},
		"trailing":     {`{} {}`, "not a JSON object"},
		"missing":      {`{"aud":{}}`, `token for audience "aud" is missing`},
		"empty":        {`{"aud":{"token":""}}`, `token for audience "aud" is missing`},
		"null entry":   {`{"aud":null}`, `token for audience "aud" is missing`},
		"wrong type":   {`{"aud":{"token":5}}`, "not a JSON object"},
		"bad expiry":   {`{"aud":{"token":"x","expirationTimestamp":"tomorrow"}}`, "not an RFC 3339 time"},
		"year 10000":   {`{"aud":{"token":"x","expirationTimestamp":"9999-12-31T23:00:00-05:00"}}`, "not an RFC 3339 time"},
		"control char": {"{\"a\\u0001\":{\"token\":\"x\"}}", "not printable"},
	} {
		_, err := ParseTokens(tc.raw)
		if CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: want %q, got %v", name, tc.msg, err)
		}
	}
}

func FuzzParseTokens(f *testing.F) {
	f.Add(`{"aud":{"token":"t","expirationTimestamp":"2030-01-01T00:00:00Z"}}`)
	f.Add(`{"a":{"token":"t"},"b":{"token":"u"}}`)
	f.Add(`{"aud":{"token":""}}`)
	f.Add(`{`)
	f.Add(`null`)
	f.Add(`{"aud":{"token":"SECRET","expirationTimestamp":"x"}}`)
	f.Fuzz(func(t *testing.T, raw string) {
		toks, err := ParseTokens(raw)
		if err != nil {
			if CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("code %v", CodeOf(err))
			}
			// Never echo the input back, except an audience name.
			if len(raw) > 12 && strings.Contains(err.Error(), raw) {
				t.Fatalf("error quotes the input: %v", err)
			}
			return
		}
		for aud, tok := range toks {
			if tok.Token == "" {
				t.Fatalf("empty token accepted for %q", aud)
			}
		}
	})
}
