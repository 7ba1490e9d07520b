package azure

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/secretfs/secretfs/provider"
)

// Mount by selector. An item of `objects` may select secrets instead of
// naming one:
//
//	- objectType: secret
//	  objectNamePrefix: shop-        # names starting with it
//	  objectNameRegex: "shop-(db|mq)-.*"   # names it matches whole (RE2)
//	  objectTags: {team: shop}       # every tag, with that value
//	  filePermission: "0400"         # as for a named object
//
// Any of the three, together meaning all of them. The vault's secrets are
// listed with the volume's identity (which needs list permission on
// secrets), and each selected secret is one file named after it, fetched
// as if named with objectName. objectName, objectAlias, objectVersion,
// objectVersionHistory and optional do not go with a selector. Secrets that
// are disabled, expired or not yet valid are left out (Key Vault refuses
// to return their value, so selecting them would fail every mount).

// Bounds of a selector's text, checked before anything is compiled.
const (
	maxRegexLen  = 256
	maxTags      = 16
	maxTagKeyLen = 512 // Key Vault's own limits on tag names and values
	maxTagValLen = 256
	// maxNameListPages bounds one listing of a vault's secret names (Key
	// Vault returns at most 25 a page: 10,000 names).
	maxNameListPages = 400
	// maxRegexWork bounds what the regexes of one listing may cost: each
	// match of a name is charged the product of the regex's and the name's
	// lengths (RE2 runs in time linear in both), before it runs. A tenant
	// controls both factors and the count of names (10,000) and of items
	// (up to --max-files): unbounded, 4,096 items of 256 bytes over 10,000
	// names of 127 would take about an hour of CPU per fetch. 64 Mi units
	// are about 0.2 s of the slowest regex; a regex of 40 bytes over 10,000
	// names of 60 costs 25 Mi.
	maxRegexWork = 64 << 20
)

func (o *object) isSelector() bool {
	return o.ObjectNamePrefix != "" || o.ObjectNameRegex != "" || len(o.ObjectTags) > 0
}

// selectorText is the selector in a fixed order, for messages.
func (o *object) selectorText() string {
	var parts []string
	if o.ObjectNamePrefix != "" {
		parts = append(parts, fmt.Sprintf("objectNamePrefix %q", o.ObjectNamePrefix))
	}
	if o.ObjectNameRegex != "" {
		parts = append(parts, fmt.Sprintf("objectNameRegex %q", provider.Clip(o.ObjectNameRegex, 80)))
	}
	if len(o.ObjectTags) > 0 {
		keys := make([]string, 0, len(o.ObjectTags))
		for k := range o.ObjectTags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tags := make([]string, 0, len(keys))
		for _, k := range keys {
			tags = append(tags, provider.Clip(k, 40)+"="+provider.Clip(o.ObjectTags[k], 40))
		}
		parts = append(parts, "objectTags {"+strings.Join(tags, ", ")+"}")
	}
	return strings.Join(parts, " and ")
}

// normalizeSelector checks a selector item and compiles its regex.
func (o *object) normalizeSelector() error {
	switch {
	case o.ObjectName != "":
		return fmt.Errorf("objectName %q and a selector (objectNamePrefix, objectNameRegex, objectTags) exclude each other", o.ObjectName)
	case o.ObjectAlias != "":
		return fmt.Errorf("objectAlias cannot be used with a selector: each selected secret is written under its own name")
	case o.ObjectVersion != "" || o.ObjectVersionHistory != 0:
		return fmt.Errorf("objectVersion and objectVersionHistory cannot be used with a selector: the latest version of each selected secret is mounted")
	case o.Optional:
		return fmt.Errorf("optional cannot be used with a selector: a selector that selects nothing mounts nothing and is no error")
	case o.ObjectType != typeSecret:
		return fmt.Errorf("a selector selects secrets only: set objectType: secret (got %q)", o.ObjectType)
	}
	if o.ObjectNamePrefix != "" && !validObjectName(o.ObjectNamePrefix) {
		return fmt.Errorf("objectNamePrefix %q is not the start of a Key Vault object name (letters, digits and hyphens)", provider.Clip(o.ObjectNamePrefix, 80))
	}
	if o.ObjectNameRegex != "" {
		if len(o.ObjectNameRegex) > maxRegexLen {
			return fmt.Errorf("objectNameRegex is %d bytes long, more than the %d allowed", len(o.ObjectNameRegex), maxRegexLen)
		}
		// Go's RE2 runs in time linear in the name; anchored, the regex
		// matches whole names only.
		re, err := regexp.Compile(`^(?:` + o.ObjectNameRegex + `)$`)
		if err != nil {
			return fmt.Errorf("objectNameRegex %q is not a regular expression (RE2 syntax): %v", provider.Clip(o.ObjectNameRegex, 80), err)
		}
		o.regex = re
	}
	if len(o.ObjectTags) > maxTags {
		return fmt.Errorf("objectTags has %d tags, more than the %d allowed", len(o.ObjectTags), maxTags)
	}
	for k, v := range o.ObjectTags {
		if k == "" || len(k) > maxTagKeyLen || len(v) > maxTagValLen {
			return fmt.Errorf("objectTags: tag names are 1-%d bytes and values at most %d", maxTagKeyLen, maxTagValLen)
		}
	}
	return nil
}

// selects reports whether the secret with these properties is selected.
func (o *object) selects(name string, tags map[string]*string) bool {
	if !strings.HasPrefix(name, o.ObjectNamePrefix) {
		return false
	}
	if o.regex != nil && !o.regex.MatchString(name) {
		return false
	}
	for k, want := range o.ObjectTags {
		got, ok := tags[k]
		if !ok || got == nil || *got != want {
			return false
		}
	}
	return true
}

// usable reports whether Key Vault would return the secret's value now.
func usable(a *azsecrets.SecretAttributes, now time.Time) bool {
	if a == nil {
		return true
	}
	if a.Enabled != nil && !*a.Enabled {
		return false
	}
	if a.Expires != nil && !now.Before(*a.Expires) {
		return false
	}
	if a.NotBefore != nil && now.Before(*a.NotBefore) {
		return false
	}
	return true
}

// expand replaces the selector items of objs with one named object per
// selected secret, listing the vault's secret names once (paged) with the
// volume's identity. The count of objects is checked as the pages arrive:
// over maxFiles the listing stops ResourceExhausted, before any content is
// read. Two items that write the same file are InvalidArgument naming both.
func (f *fetcher) expand(ctx context.Context, objs []*object, maxFiles int) ([]*object, error) {
	var sels []*object
	var out []*object
	for _, o := range objs {
		if o.isSelector() {
			sels = append(sels, o)
		} else {
			out = append(out, o)
		}
	}
	if len(sels) == 0 {
		return objs, nil
	}
	named := map[string]string{} // file -> the named object that writes it
	for i, o := range out {
		for _, name := range o.fileNames() {
			named[name] = fmt.Sprintf("objects item %d (objectName %q)", i, o.ObjectName)
		}
	}
	now := time.Now()
	var refused error // the selection's own errors, kept from mapError
	err := f.call(ctx, sels[0], func(ctx context.Context) error {
		owner := maps.Clone(named) // a retried listing starts over
		selected := slices.Clip(out)
		var regexWork int64
		pager := f.vc.secrets.NewListSecretPropertiesPager(nil)
		for pages := 0; pager.More(); pages++ {
			if pages >= maxNameListPages {
				refused = provider.Errorf(codes.ResourceExhausted, "Key Vault %q lists more than %d pages of secrets: a selector reads at most %d pages", f.cfg.vaultName, maxNameListPages, maxNameListPages)
				return nil
			}
			page, err := pager.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, props := range page.Value {
				if props == nil || props.ID == nil || !usable(props.Attributes, now) {
					continue
				}
				name := props.ID.Name()
				for _, sel := range sels {
					if sel.regex != nil && strings.HasPrefix(name, sel.ObjectNamePrefix) {
						if regexWork += int64(len(sel.ObjectNameRegex)+1) * int64(len(name)+1); regexWork > maxRegexWork {
							refused = provider.Errorf(codes.ResourceExhausted,
								"matching objectNameRegex over the names of Key Vault %q costs more than the %d units a listing may spend (a regex's length times a name's, per match): "+
									"use fewer or shorter regexes, or narrow them with objectNamePrefix, which costs nothing", f.cfg.vaultName, maxRegexWork)
							return nil
						}
					}
					if !sel.selects(name, props.Tags) {
						continue
					}
					what := "the selector " + sel.selectorText()
					if prev, dup := owner[name]; dup {
						refused = provider.InvalidArgument("%s and %s both write file %q: narrow one or give the named object an objectAlias", prev, what, name)
						return nil
					}
					owner[name] = what
					if len(selected) >= maxFiles {
						refused = provider.Errorf(codes.ResourceExhausted,
							"%s and the named objects select more than %d secrets, the per-volume file limit (driver flag --max-files): narrow the selector or split the class",
							what, maxFiles)
						return nil
					}
					o := *sel
					o.ObjectName, o.ObjectNamePrefix, o.ObjectNameRegex, o.ObjectTags, o.regex = name, "", "", nil, nil
					selected = append(selected, &o)
				}
			}
		}
		out = selected
		return nil
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}
