package content

import (
	"os"
	"strings"
	"unsafe"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// Output is a volume's content after Render.
type Output struct {
	Files    []provider.File
	Versions []provider.ObjectVersion
	// Missing names the optional objects that were not found.
	Missing []string
}

// Render turns a fetched result into the volume's files: optional objects
// that were not found are reported in Missing, templates are rendered from
// the objects' files (keyed by path), and the objects' own files are left
// out when the class hides them. w is the budget of the volume's
// computation: what templates allocate and the steps they take; defaultMode is the
// mode of templated files that set none. res is not modified; the
// returned files share its contents, and own the rendered ones.
func (p *Plan) Render(res *provider.Result, w *budget.Work, defaultMode os.FileMode) (*Output, error) {
	out := &Output{Files: res.Files, Versions: res.Versions}
	if p == nil {
		return out, nil
	}
	if len(p.objects) > 0 {
		out.Versions = make([]provider.ObjectVersion, 0, len(res.Versions))
		for _, v := range res.Versions {
			if name, ok := strings.CutPrefix(v.ID, missingID); ok {
				out.Missing = append(out.Missing, name)
				continue
			}
			out.Versions = append(out.Versions, v)
		}
	}
	if len(p.templates) == 0 {
		return out, nil
	}
	// The templates run in the volume's turn among the node's computations.
	end, err := w.Turn()
	if err != nil {
		return nil, err
	}
	defer end()
	// The template reads the objects in place (no copies of secrets that
	// could not be wiped); nothing writes them while it runs.
	data := make(map[string]string, len(res.Files))
	var used int64
	for _, f := range res.Files {
		data[f.Path] = unsafe.String(unsafe.SliceData(f.Contents), len(f.Contents))
		used += int64(len(f.Contents))
	}
	// The objects' files share the volume's room with what templates write.
	if !p.hideObjects {
		if used > w.Left() {
			return nil, provider.Errorf(codes.ResourceExhausted, "the objects alone fill the volume: no room is left for templates")
		}
		if err := w.Charge(used); err != nil {
			return nil, err
		}
	}
	files := make([]provider.File, 0, len(res.Files)+len(p.templates))
	if !p.hideObjects {
		files = append(files, res.Files...)
	}
	first := len(files)
	for _, t := range p.templates {
		if _, clash := data[t.Path]; clash && !p.hideObjects {
			return nil, provider.InvalidArgument("template %q has the path of an object's file: rename one of them (or hide the objects with %s)", t.Path, ParamHideObjects)
		}
		text, err := t.render(data, w)
		if err != nil {
			for _, f := range files[first:] {
				clear(f.Contents)
			}
			return nil, err
		}
		mode := t.Mode
		if mode == 0 {
			mode = defaultMode
		}
		files = append(files, provider.File{Path: t.Path, Mode: mode, Contents: text})
	}
	out.Files = files
	return out, nil
}
