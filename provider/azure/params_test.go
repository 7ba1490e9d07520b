package azure

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/secretfs/secretfs/provider"
	"google.golang.org/grpc/codes"
)

func baseParams() map[string]string {
	return map[string]string{
		"keyvaultName": "kv-1",
		"tenantID":     "tenant-1",
		"clientID":     "client-1",
		"objects":      "- objectName: a\n  objectType: secret\n",
	}
}

func TestParseConfigAccepts(t *testing.T) {
	for name, mod := range map[string]func(p, s map[string]string){
		"workload identity":       func(p, s map[string]string) {},
		"deprecated tenantId":     func(p, s map[string]string) { delete(p, "tenantID"); p["tenantId"] = "t" },
		"usePodIdentity false":    func(p, s map[string]string) { p["usePodIdentity"] = "false" },
		"china cloud, any case":   func(p, s map[string]string) { p["cloudName"] = "azurechinacloud" },
		"us gov cloud":            func(p, s map[string]string) { p["cloudName"] = "AzureUSGovernmentCloud" },
		"system managed identity": func(p, s map[string]string) { delete(p, "clientID"); p["useVMManagedIdentity"] = "true" },
		"user managed identity": func(p, s map[string]string) {
			delete(p, "clientID")
			p["useVMManagedIdentity"] = "true"
			p["userAssignedIdentityID"] = "u"
		},
		"service principal":         func(p, s map[string]string) { delete(p, "clientID"); s["clientid"] = "c"; s["clientsecret"] = "x" },
		"managed identity false+wi": func(p, s map[string]string) { p["useVMManagedIdentity"] = "false" },
	} {
		p, s := baseParams(), map[string]string{}
		mod(p, s)
		if _, err := parseConfig(p, s, 0); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseConfigRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(p, s map[string]string)
		want string
	}{
		"no vault":          {func(p, s map[string]string) { delete(p, "keyvaultName") }, "keyvaultName is not set"},
		"short vault":       {func(p, s map[string]string) { p["keyvaultName"] = "ab" }, "3-24"},
		"long vault":        {func(p, s map[string]string) { p["keyvaultName"] = strings.Repeat("a", 25) }, "3-24"},
		"vault chars":       {func(p, s map[string]string) { p["keyvaultName"] = "kv.evil.com" }, "3-24"},
		"no tenant":         {func(p, s map[string]string) { delete(p, "tenantID") }, "tenantID is not set"},
		"unknown cloud":     {func(p, s map[string]string) { p["cloudName"] = "AzureStackCloud" }, "cloudName"},
		"cloud env file":    {func(p, s map[string]string) { p["cloudEnvFileName"] = "/x.json" }, "cloudEnvFileName"},
		"pod identity":      {func(p, s map[string]string) { p["usePodIdentity"] = "true" }, "usePodIdentity"},
		"bad bool":          {func(p, s map[string]string) { p["useVMManagedIdentity"] = "yes please" }, "useVMManagedIdentity"},
		"no identity":       {func(p, s map[string]string) { delete(p, "clientID") }, "no identity"},
		"wi + mi":           {func(p, s map[string]string) { p["useVMManagedIdentity"] = "true" }, "clientID (workload identity), useVMManagedIdentity"},
		"wi + sp":           {func(p, s map[string]string) { s["clientid"] = "c"; s["clientsecret"] = "x" }, "service principal"},
		"sp without secret": {func(p, s map[string]string) { delete(p, "clientID"); s["clientid"] = "c" }, "clientsecret"},
		"uami without mi":   {func(p, s map[string]string) { p["userAssignedIdentityID"] = "u" }, "userAssignedIdentityID"},
		"no objects":        {func(p, s map[string]string) { delete(p, "objects") }, "objects"},
		"empty array":       {func(p, s map[string]string) { p["objects"] = "array: []" }, "no objects"},
		"unknown field": {func(p, s map[string]string) {
			p["objects"] = "- objectName: a\n  objectType: secret\n  objectNotAfter: x\n"
		}, "objectNotAfter"},
		"no type":  {func(p, s map[string]string) { p["objects"] = "- objectName: a\n" }, "objectType"},
		"bad type": {func(p, s map[string]string) { p["objects"] = "- {objectName: a, objectType: blob}" }, "blob"},
		"bad name": {func(p, s map[string]string) { p["objects"] = "- {objectName: a/b, objectType: secret}" }, "objectName"},
		"bad version": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectVersion: ../x}"
		}, "objectVersion"},
		"pfx on key": {func(p, s map[string]string) { p["objects"] = "- {objectName: a, objectType: key, objectFormat: pfx}" }, "pfx"},
		"bad format": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectFormat: der}"
		}, "objectFormat"},
		"encoding on cert": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: cert, objectEncoding: hex}"
		}, "objectEncoding"},
		"bad encoding": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectEncoding: rot13}"
		}, "objectEncoding"},
		"alias escapes": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectAlias: ../etc}"
		}, "file name"},
		"absolute alias": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectAlias: /etc/x}"
		}, "file name"},
		"bad permission": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, filePermission: '0999'}"
		}, "filePermission"},
		"negative history": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectVersionHistory: -1}"
		}, "negative"},
		"huge history": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret, objectVersionHistory: 5000}"
		}, "at most"},
		"duplicate files": {func(p, s map[string]string) {
			p["objects"] = "- {objectName: a, objectType: secret}\n- {objectName: a, objectType: key}"
		}, "both write"},
	} {
		p, s := baseParams(), map[string]string{}
		tc.mod(p, s)
		_, err := parseConfig(p, s, 0)
		if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want InvalidArgument mentioning %q, got %v", name, tc.want, err)
		}
	}
}

func TestParseConfigNeverEchoesClientSecret(t *testing.T) {
	p := baseParams()
	s := map[string]string{"clientid": "c", "clientsecret": "hunter2-secret"}
	_, err := parseConfig(p, s, 0) // two identities
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("kv-1", "t", "AzurePublicCloud", "c", "false", "- objectName: a\n  objectType: secret\n", "")
	f.Add("kv-1", "t", "", "", "true", "array:\n  - |\n    objectName: a\n    objectType: key\n    objectVersionHistory: 3\n", "")
	f.Add("kv", "t", "x", "c", "", "- {objectName: a, objectType: secret, objectAlias: ../../x}", "sec")
	f.Add("kv-1", "t", "azurechinacloud", "c", "", "- {objectName: a, objectType: secret, filePermission: '0400', objectEncoding: base64, objectFormat: PFX}", "")
	f.Fuzz(func(t *testing.T, vault, tenant, cloudName, clientID, useMI, objects, spSecret string) {
		p := map[string]string{"keyvaultName": vault, "tenantID": tenant, "cloudName": cloudName, "clientID": clientID, "useVMManagedIdentity": useMI, "objects": objects}
		s := map[string]string{}
		if spSecret != "" {
			s["clientid"], s["clientsecret"] = "c", spSecret
		}
		cfg, err := parseConfig(p, s, 0o640)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", provider.CodeOf(err), err)
			}
			if len(spSecret) > 3 && strings.Contains(err.Error(), spSecret) && !strings.Contains(vault+tenant+cloudName+clientID+useMI+objects, spSecret) {
				t.Fatalf("client secret echoed: %v", err)
			}
			return
		}
		for _, o := range cfg.objects {
			if o.isSelector() {
				checkSelector(t, o)
				continue
			}
			for _, name := range o.fileNames() {
				name = strings.TrimSuffix(name, "/")
				if validFileName(name) != nil || strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
					t.Fatalf("unsafe file name %q accepted", name)
				}
			}
			if o.mode&^0o777 != 0 {
				t.Fatalf("mode %o", o.mode)
			}
		}
	})
}

func FuzzParseObjects(f *testing.F) {
	f.Add("array:\n  - |\n    objectName: a\n    objectType: secret\n")
	f.Add("- objectName: a\n  objectType: cert\n  objectVersion: latest\n")
	f.Add("- {objectName: a, objectType: secret, objectVersionHistory: 2, objectAlias: dir/f}\n- {objectName: b, objectType: key}")
	f.Add("- {objectType: secret, objectNamePrefix: shop-, objectNameRegex: 'shop-(db|mq)', objectTags: {team: shop}}")
	f.Fuzz(func(t *testing.T, in string) {
		objs, err := parseObjects(in, 0)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", provider.CodeOf(err), err)
			}
			return
		}
		seen := map[string]bool{}
		for _, o := range objs {
			if o.isSelector() {
				checkSelector(t, o)
				continue
			}
			if !objectNameRE.MatchString(o.ObjectName) || validFileName(o.fileName()) != nil {
				t.Fatalf("invalid object accepted: %+v", o)
			}
			if seen[o.fileName()] {
				t.Fatalf("duplicate file %q accepted", o.fileName())
			}
			seen[o.fileName()] = true
		}
	})
}

// checkSelector checks what an accepted selector item promises: a secret
// only, nothing that names one file, a compiled regex when it has one, and
// bounded text.
func checkSelector(t *testing.T, o *object) {
	t.Helper()
	if o.ObjectType != typeSecret || o.ObjectName != "" || o.ObjectAlias != "" || o.ObjectVersion != "" || o.ObjectVersionHistory != 0 || o.Optional {
		t.Fatalf("selector accepted with fields that do not go with it: %+v", o)
	}
	if (o.ObjectNameRegex != "") != (o.regex != nil) || len(o.ObjectNameRegex) > maxRegexLen || len(o.ObjectTags) > maxTags {
		t.Fatalf("selector regex or tags not checked: %+v", o)
	}
	if o.ObjectNamePrefix != "" && !objectNameRE.MatchString(o.ObjectNamePrefix) {
		t.Fatalf("prefix %q accepted", o.ObjectNamePrefix)
	}
	if o.mode&^0o777 != 0 {
		t.Fatalf("mode %o", o.mode)
	}
}

// parseChallenge has two properties: any header parses into trimmed keys and
// values holding no comma and no surrounding quote; and a challenge built
// from two token keys and plain values parses back into exactly them.
func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net"`, "authorization", "https://login.microsoftonline.com/t", "resource", "https://vault.azure.net")
	f.Add(`Bearer authorization="x",scope="https://vault.azure.net/.default"`, "authorization", "x", "scope", "https://vault.azure.net/.default")
	f.Add(`bearer a=b=c,,=d, "e"`, "a", "b=c", "e", "")
	f.Fuzz(func(t *testing.T, h, k1, v1, k2, v2 string) {
		for k, v := range parseChallenge(h) {
			if k != strings.TrimSpace(k) || strings.Contains(k, ",") {
				t.Fatalf("%q: key %q not trimmed or holds a comma", h, k)
			}
			if strings.Contains(v, ",") || strings.HasPrefix(v, `"`) || strings.HasSuffix(v, `"`) {
				t.Fatalf("%q: value %q holds a comma or a surrounding quote", h, v)
			}
		}
		token := func(s string) bool {
			return s != "" && !strings.ContainsFunc(s, func(r rune) bool {
				return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"=,;\`, r)
			})
		}
		plain := func(s string) bool {
			return s == strings.TrimSpace(s) && !strings.ContainsAny(s, `",`)
		}
		if !token(k1) || !token(k2) || k1 == k2 || !plain(v1) || !plain(v2) {
			return
		}
		header := fmt.Sprintf(`Bearer %s="%s", %s="%s"`, k1, v1, k2, v2)
		got := parseChallenge(header)
		if want := map[string]string{k1: v1, k2: v2}; !maps.Equal(got, want) {
			t.Fatalf("%q parsed as %v, want %v", header, got, want)
		}
	})
}

// The class's parameters are decoded in the volume's turn among the node's
// computations (Request.Turn); a turn that cannot be had fails the fetch
// with its error before Key Vault is asked.
func TestFetchDecodesInTurn(t *testing.T) {
	e := newTestEnv(t, nil)
	req := e.spRequest("array:\n  - |\n    objectName: db\n    objectType: secret\n")
	turns := 0
	req.Turn = func() (func(), error) { turns++; return nil, provider.Errorf(codes.DeadlineExceeded, "no turn") }
	if _, err := e.p.Fetch(context.Background(), req); provider.CodeOf(err) != codes.DeadlineExceeded || turns != 1 {
		t.Errorf("%v after %d turns, want the turn's error after 1", err, turns)
	}
}
