package content

import (
	"context"
	"maps"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// Backend is one call to the class's provider.
type Backend func(ctx context.Context, req *provider.Request) (*provider.Result, error)

// missingID marks, among a result's versions, an optional object that was
// not found, so that every volume served the result (also from the node
// cache) learns of it. Render takes the marks out; providers never see them.
const missingID = Prefix + "missing/"

// Fetch gets the volume's objects through backend. Without optional or
// keyPath objects that is one call with req as it is. Otherwise the
// objects without them go in one call and each object with them in a call
// of its own, so that a NotFound names exactly one object: an optional
// one is left out, any other error fails the whole fetch. Key paths are
// applied here, under the budget w. req.Parameters must be
// Parameters().
func (p *Plan) Fetch(ctx context.Context, req *provider.Request, w *budget.Work, backend Backend) (*provider.Result, error) {
	if p == nil || len(p.objects) == 0 {
		return backend(ctx, req)
	}
	current := withoutMarks(req.CurrentVersions)
	out := &provider.Result{}
	call := func(keep func(*object) bool) (*provider.Result, error) {
		sub := *req
		sub.Parameters = maps.Clone(req.Parameters)
		sub.Parameters[p.objectsParam] = encodeObjects(p.objects, p.arrayForm, keep)
		sub.CurrentVersions = current
		return backend(ctx, &sub)
	}
	hasPlain := false
	for i := range p.objects {
		hasPlain = hasPlain || !p.objects[i].special()
	}
	if hasPlain {
		res, err := call(func(o *object) bool { return !o.special() })
		if err != nil {
			return nil, err
		}
		out.Files = append(out.Files, res.Files...)
		out.Versions = append(out.Versions, res.Versions...)
	}
	for i := range p.objects {
		o := &p.objects[i]
		if !o.special() {
			continue
		}
		res, err := call(func(x *object) bool { return x == o })
		if err == nil && o.keyPath != nil {
			err = extract(o, res, w)
		}
		if err != nil {
			if o.optional && provider.CodeOf(err) == codes.NotFound {
				out.Versions = append(out.Versions, provider.ObjectVersion{ID: missingID + o.name})
				continue
			}
			wipe(out)
			if o.keyPath != nil && res != nil {
				wipe(res)
			}
			return nil, provider.Errorf(provider.CodeOf(err), "%s: %s", o.name, err.Error())
		}
		out.Files = append(out.Files, res.Files...)
		out.Versions = append(out.Versions, res.Versions...)
	}
	return out, nil
}

// extract replaces the one file of an object with the value at its key path.
func extract(o *object, res *provider.Result, w *budget.Work) error {
	if len(res.Files) != 1 {
		wipe(res)
		return provider.InvalidArgument("keyPath needs the object to be exactly one file; the provider returned %d", len(res.Files))
	}
	f := &res.Files[0]
	end, err := w.Turn()
	if err != nil {
		wipe(res)
		return err
	}
	v, err := o.keyPath.Extract(f.Contents, w)
	end()
	if err != nil {
		wipe(res)
		return provider.Errorf(provider.CodeOf(err), "keyPath %s: %s", o.keyPath, err.Error())
	}
	clear(f.Contents)
	f.Contents = v
	return nil
}

func withoutMarks(vs []provider.ObjectVersion) []provider.ObjectVersion {
	out := vs[:0:0]
	for _, v := range vs {
		if !strings.HasPrefix(v.ID, missingID) {
			out = append(out, v)
		}
	}
	return out
}

func wipe(res *provider.Result) {
	if res == nil {
		return
	}
	for i := range res.Files {
		clear(res.Files[i].Contents)
	}
}
