package content

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Bounds of templates, checked while parsing and rendering.
const (
	maxTemplates      = 64
	maxTemplateSource = 64 << 10
	// MaxSteps bounds the work of rendering one volume's templates: each
	// template or range iteration entered is one step.
	MaxSteps = 100_000
	// maxPad bounds printf widths and precisions and indent widths.
	maxPad = 4096
)

// stepFunc is called at the start of every template body and range
// iteration (the parse trees are rewritten to call it); its name cannot
// clash with the documented functions.
const stepFunc = "_secretfs_step"

// Template is one templated file of a class.
type Template struct {
	Path string
	Mode os.FileMode // 0: the volume's default
	t    *template.Template
}

// funcNames is the documented function set (see README "Templates"); the
// values are placeholders replaced per render by functions bound to that
// render's budget.
var funcNames = template.FuncMap{
	"base64": nop1, "base64decode": nop1e, "trim": nop1, "trimPrefix": nop2, "trimSuffix": nop2,
	"upper": nop1, "lower": nop1, "quote": nop1, "squote": nop1, "json": nopAny, "replace": nop3,
	"indent": nopIndent, "default": nop2, "required": nop2e,
	// Builtins that build strings are replaced with versions that count
	// what they allocate.
	"print": nopVar, "println": nopVar, "printf": nopF, "html": nopVar, "js": nopVar, "urlquery": nopVar,
	stepFunc: func() (string, error) { return "", nil },
}

func nop1(string) string                    { return "" }
func nop1e(string) (string, error)          { return "", nil }
func nop2(string, string) string            { return "" }
func nop2e(string, string) (string, error)  { return "", nil }
func nop3(string, string, string) string    { return "" }
func nopAny(any) (string, error)            { return "", nil }
func nopIndent(int, string) (string, error) { return "", nil }
func nopVar(...any) (string, error)         { return "", nil }
func nopF(string, ...any) (string, error)   { return "", nil }

// parseTemplate parses one template's source; name is the file it renders.
func parseTemplate(name, src string) (*template.Template, error) {
	if len(src) > maxTemplateSource {
		return nil, fmt.Errorf("is %d bytes; a template is at most %d", len(src), maxTemplateSource)
	}
	t, err := template.New(name).Option("missingkey=error").Funcs(funcNames).Parse(src)
	if err != nil {
		return nil, errors.New(templateMessage(err))
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil && tt.Tree.Root != nil {
			instrument(tt.Tree, tt.Tree.Root)
		}
	}
	return t, nil
}

// instrument makes list (a template body) and every range body in it call
// the step function first, so that loops and template calls are counted.
func instrument(tree *parse.Tree, list *parse.ListNode) {
	if list == nil {
		return
	}
	for _, n := range list.Nodes {
		switch n := n.(type) {
		case *parse.RangeNode:
			instrument(tree, n.List)
			instrument(tree, n.ElseList)
			n.List = withStep(tree, n.List, n.Pos)
		case *parse.IfNode:
			instrument(tree, n.List)
			instrument(tree, n.ElseList)
		case *parse.WithNode:
			instrument(tree, n.List)
			instrument(tree, n.ElseList)
		}
	}
	if list == tree.Root {
		tree.Root = withStep(tree, list, list.Pos)
	}
}

func withStep(tree *parse.Tree, list *parse.ListNode, pos parse.Pos) *parse.ListNode {
	if list == nil {
		list = &parse.ListNode{NodeType: parse.NodeList, Pos: pos}
	}
	id := parse.NewIdentifier(stepFunc).SetTree(tree).SetPos(pos)
	cmd := &parse.CommandNode{NodeType: parse.NodeCommand, Pos: pos, Args: []parse.Node{id}}
	action := &parse.ActionNode{NodeType: parse.NodeAction, Pos: pos,
		Pipe: &parse.PipeNode{NodeType: parse.NodePipe, Pos: pos, Cmds: []*parse.CommandNode{cmd}}}
	list.Nodes = append([]parse.Node{action}, list.Nodes...)
	return list
}

// budget is what one render may spend: output and allocated bytes, steps.
type budget struct {
	bytes int64
	steps int
}

var errBudget = errors.New("budget")

func (b *budget) charge(n int) error {
	b.bytes -= int64(n)
	if b.bytes < 0 {
		return errBudget
	}
	return nil
}

// limitedWriter fails once the budget is spent.
type limitedWriter struct {
	buf bytes.Buffer
	b   *budget
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if err := w.b.charge(len(p)); err != nil {
		return 0, err
	}
	return w.buf.Write(p)
}

// funcs returns the function set bound to one render's budget.
func funcs(b *budget) template.FuncMap {
	out := func(s string) (string, error) {
		if err := b.charge(len(s)); err != nil {
			return "", err
		}
		return s, nil
	}
	return template.FuncMap{
		"base64": func(s string) (string, error) {
			if err := b.charge(base64.StdEncoding.EncodedLen(len(s))); err != nil {
				return "", err
			}
			return base64.StdEncoding.EncodeToString([]byte(s)), nil
		},
		"base64decode": func(s string) (string, error) {
			v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
			if err != nil {
				return "", errors.New("the value is not valid base64")
			}
			return out(string(v))
		},
		"trim":       strings.TrimSpace,
		"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"upper":      func(s string) (string, error) { return out(strings.ToUpper(s)) },
		"lower":      func(s string) (string, error) { return out(strings.ToLower(s)) },
		"quote": func(s string) (string, error) {
			return charged(b, 2*len(s)+2, func() string { return strconv.Quote(s) })
		},
		"squote": func(s string) (string, error) {
			return charged(b, 4*len(s)+2, func() string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" })
		},
		"json": func(v any) (string, error) {
			s, ok := v.(string)
			if err := b.charge(6*len(s) + 16); err != nil {
				return "", err
			}
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			if !ok {
				if err := enc.Encode(v); err != nil {
					return "", errors.New("the value cannot be printed as JSON")
				}
				return out(strings.TrimSuffix(buf.String(), "\n"))
			}
			_ = enc.Encode(s)
			return strings.TrimSuffix(buf.String(), "\n"), nil
		},
		"replace": func(old, new, s string) (string, error) {
			n := len(s)
			if len(new) > len(old) {
				count := strings.Count(s, old)
				if old == "" {
					count = len(s) + 1
				}
				n += count * (len(new) - len(old))
			}
			return charged(b, n, func() string { return strings.ReplaceAll(s, old, new) })
		},
		"indent": func(n int, s string) (string, error) {
			if n < 0 || n > maxPad {
				return "", fmt.Errorf("indent takes 0 to %d spaces", maxPad)
			}
			pad := strings.Repeat(" ", n)
			return charged(b, len(s)+(strings.Count(s, "\n")+1)*n, func() string {
				return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
			})
		},
		"default": func(def, s string) string {
			if s == "" {
				return def
			}
			return s
		},
		"required": func(msg, s string) (string, error) {
			if s == "" {
				return "", errors.New(msg)
			}
			return s, nil
		},
		"print":   func(args ...any) (string, error) { return out(fmt.Sprint(args...)) },
		"println": func(args ...any) (string, error) { return out(fmt.Sprintln(args...)) },
		"printf": func(format string, args ...any) (string, error) {
			if err := checkFormat(format); err != nil {
				return "", err
			}
			return out(fmt.Sprintf(format, args...))
		},
		"html":     func(args ...any) (string, error) { return out(template.HTMLEscaper(args...)) },
		"js":       func(args ...any) (string, error) { return out(template.JSEscaper(args...)) },
		"urlquery": func(args ...any) (string, error) { return out(url.QueryEscape(fmt.Sprint(args...))) },
		stepFunc: func() (string, error) {
			b.steps--
			if b.steps < 0 {
				return "", errSteps
			}
			return "", nil
		},
	}
}

var errSteps = fmt.Errorf("more than %d template or loop steps", MaxSteps)

func charged(b *budget, n int, f func() string) (string, error) {
	if err := b.charge(n); err != nil {
		return "", err
	}
	return f(), nil
}

// checkFormat refuses printf widths and precisions that would allocate
// more than maxPad bytes before the budget could see them.
func checkFormat(f string) error {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		for i < len(f) && strings.IndexByte("+-# 0", f[i]) >= 0 {
			i++
		}
		for i < len(f) {
			switch c := f[i]; {
			case c == '*':
				return errors.New("printf: * widths are not allowed")
			case c == '[' || c == '.':
				i++
			case c >= '0' && c <= '9':
				j := i
				for i < len(f) && f[i] >= '0' && f[i] <= '9' {
					i++
				}
				if n, err := strconv.Atoi(f[j:i]); err != nil || n > maxPad {
					return fmt.Errorf("printf: widths and precisions are at most %d", maxPad)
				}
			case c == ']':
				i++
			default:
				goto verb
			}
		}
	verb:
	}
	return nil
}

// render executes t over data within b.
func (tp *Template) render(data map[string]string, b *budget) ([]byte, error) {
	t, err := tp.t.Clone()
	if err != nil {
		return nil, provider.InvalidArgument("template %q: %v", tp.Path, err)
	}
	t.Funcs(funcs(b))
	w := &limitedWriter{b: b}
	if err := t.Execute(w, data); err != nil {
		return nil, renderError(tp.Path, err)
	}
	return w.buf.Bytes(), nil
}

func renderError(path string, err error) error {
	if errors.Is(err, errBudget) {
		return provider.Errorf(codes.ResourceExhausted, "template %q: rendering needs more bytes than the volume has room for (%s)", path, lineOf(err))
	}
	if errors.Is(err, errSteps) {
		return provider.Errorf(codes.ResourceExhausted, "template %q: %v (%s): loop over less", path, errSteps, lineOf(err))
	}
	return provider.InvalidArgument("template %q: %s", path, templateMessage(err))
}

// tmplPos matches text/template's "template: NAME:LINE[:COL]: " prefix.
var tmplPos = regexp.MustCompile(`^template: (?:[^:]*):(\d+)(?::\d+)?: `)

// templateMessage rewrites a text/template error as "line N: what".
func templateMessage(err error) string {
	msg := err.Error()
	if m := tmplPos.FindStringSubmatchIndex(msg); m != nil {
		line := msg[m[2]:m[3]]
		rest := msg[m[1]:]
		// "executing "x" at <.a>: " adds nothing the line does not say,
		// except the action, which is template source: keep it.
		return "line " + line + ": " + rest
	}
	return strings.TrimPrefix(msg, "template: ")
}

func lineOf(err error) string {
	if m := tmplPos.FindStringSubmatch(err.Error()); m != nil {
		return "line " + m[1]
	}
	return "while rendering"
}
