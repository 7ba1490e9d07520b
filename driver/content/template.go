package content

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// Bounds of templates, checked while parsing and rendering.
const (
	maxTemplates      = 64
	maxTemplateSource = 64 << 10
	// maxNesting bounds how deep actions nest (if, with, range, template
	// calls, parenthesized pipelines): rendering recurses that deep, and
	// goroutine stacks are memory no budget sees.
	maxNesting = 64
	// maxPad bounds printf widths and precisions and indent widths.
	maxPad = 4096
)

// Names of the functions the parse trees are rewritten to call; they cannot
// clash with the documented functions.
const (
	// stepFunc + N is called at the start of every template body and range
	// iteration and charges N steps: what the body costs to run once, from
	// its nodes, commands and arguments (see cost).
	stepFunc = "_secretfs_step_"
	// outFunc ends the pipeline of every action that prints, and charges
	// the bytes fmt will format the value into before it does.
	outFunc = "_secretfs_out"
	// rangeFunc ends the pipeline of every range, and charges what
	// text/template does before the first iteration: a range over a map
	// copies and sorts its keys, however early the body breaks.
	rangeFunc = "_secretfs_range"
)

// Template is one templated file of a class.
type Template struct {
	Path  string
	Mode  os.FileMode // 0: the volume's default
	t     *template.Template
	steps []int // the step costs the rewritten trees charge
}

// funcNames is the function set for parsing: its functions are replaced per
// render by ones bound to that render's budget.
var funcNames = funcs(nil)

// parseTemplate parses one template's source; name is the file it renders.
func parseTemplate(name, src string) (*template.Template, []int, error) {
	if len(src) > maxTemplateSource {
		return nil, nil, fmt.Errorf("is %d bytes; a template is at most %d", len(src), maxTemplateSource)
	}
	t, err := template.New(name).Option("missingkey=error").Funcs(funcNames).Parse(src)
	if err != nil {
		return nil, nil, errors.New(templateMessage(err))
	}
	if err := checkCalls(t); err != nil {
		return nil, nil, err
	}
	in := &instrumenter{seen: map[int]bool{}}
	for _, tt := range t.Templates() {
		if tt.Tree != nil && tt.Tree.Root != nil {
			if err := in.body(tt.Tree, tt.Tree.Root, 0); err != nil {
				return nil, nil, err
			}
			tt.Tree.Root = in.withStep(tt.Tree, tt.Tree.Root, tt.Tree.Root.Pos)
		}
	}
	return t, in.steps, nil
}

// checkCalls refuses templates that call themselves, directly or through
// others (each call nests the renderer's recursion deeper), and chains of
// calls deeper than maxNesting. Required messages must be literal text, so
// that no value can become an error message (and from there an Event).
func checkCalls(t *template.Template) error {
	calls := map[string][]string{}
	for _, tt := range t.Templates() {
		if tt.Tree == nil || tt.Tree.Root == nil {
			continue
		}
		var err error
		walk(tt.Tree.Root, func(n parse.Node) bool {
			switch n := n.(type) {
			case *parse.TemplateNode:
				calls[tt.Name()] = append(calls[tt.Name()], n.Name)
			case *parse.CommandNode:
				if id, ok := n.Args[0].(*parse.IdentifierNode); ok && id.Ident == "required" {
					if len(n.Args) < 2 || n.Args[1].Type() != parse.NodeString {
						err = fmt.Errorf("line %d: required takes its message as quoted text: {{ required \"what is missing\" .x }}", lineAt(tt.Tree, n.Pos))
					}
				}
			}
			return err == nil
		})
		if err != nil {
			return err
		}
	}
	depth := map[string]int{} // 0 unknown, -1 on the stack, else depth
	var visit func(name string) (int, error)
	visit = func(name string) (int, error) {
		switch d := depth[name]; {
		case d < 0:
			return 0, fmt.Errorf("template %q calls itself: recursion is not allowed", clip(name))
		case d > 0:
			return d, nil
		}
		depth[name] = -1
		d := 1
		for _, c := range calls[name] {
			cd, err := visit(c)
			if err != nil {
				return 0, err
			}
			d = max(d, cd+1)
		}
		if d > maxNesting {
			return 0, fmt.Errorf("template calls nest %d deep; at most %d", d, maxNesting)
		}
		depth[name] = d
		return d, nil
	}
	for name := range calls {
		if _, err := visit(name); err != nil {
			return err
		}
	}
	return nil
}

// walk calls f on n and every node under it, depth first, while f says so.
func walk(n parse.Node, f func(parse.Node) bool) bool {
	if n == nil || reflect.ValueOf(n).IsNil() {
		return true
	}
	if !f(n) {
		return false
	}
	var kids []parse.Node
	switch n := n.(type) {
	case *parse.ListNode:
		kids = n.Nodes
	case *parse.ActionNode:
		kids = []parse.Node{n.Pipe}
	case *parse.IfNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.WithNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.RangeNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.TemplateNode:
		kids = []parse.Node{n.Pipe}
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			kids = append(kids, c)
		}
	case *parse.CommandNode:
		kids = n.Args
	}
	for _, k := range kids {
		if !walk(k, f) {
			return false
		}
	}
	return true
}

func lineAt(tree *parse.Tree, pos parse.Pos) int {
	loc, _ := tree.ErrorContext(&parse.TextNode{NodeType: parse.NodeText, Pos: pos})
	if _, rest, ok := strings.Cut(loc, ":"); ok {
		if n, err := strconv.Atoi(strings.SplitN(rest, ":", 2)[0]); err == nil {
			return n
		}
	}
	return 0
}

// instrumenter rewrites parse trees so that rendering charges its budget:
// each body (a template's, a range's) first charges the steps it takes to
// run once, and each printing action charges what it prints.
type instrumenter struct {
	steps []int
	seen  map[int]bool
}

// body rewrites the nodes of list, a body at nesting depth, and returns
// nothing but refusals: nesting too deep.
func (in *instrumenter) body(tree *parse.Tree, list *parse.ListNode, depth int) error {
	if list == nil {
		return nil
	}
	if depth > maxNesting {
		return fmt.Errorf("line %d: actions nest more than %d deep", lineAt(tree, list.Pos), maxNesting)
	}
	for _, n := range list.Nodes {
		var err error
		switch n := n.(type) {
		case *parse.ActionNode:
			if pipeDepth(n.Pipe) > maxNesting {
				return fmt.Errorf("line %d: pipelines nest more than %d deep", lineAt(tree, n.Pos), maxNesting)
			}
			if len(n.Pipe.Decl) == 0 {
				id := parse.NewIdentifier(outFunc).SetTree(tree).SetPos(n.Pos)
				n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: n.Pos, Args: []parse.Node{id}})
			}
		case *parse.RangeNode:
			if err = in.body(tree, n.List, depth+1); err == nil {
				err = in.body(tree, n.ElseList, depth+1)
			}
			id := parse.NewIdentifier(rangeFunc).SetTree(tree).SetPos(n.Pos)
			n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: n.Pos, Args: []parse.Node{id}})
			n.List = in.withStep(tree, n.List, n.Pos)
		case *parse.IfNode:
			if err = in.body(tree, n.List, depth+1); err == nil {
				err = in.body(tree, n.ElseList, depth+1)
			}
		case *parse.WithNode:
			if err = in.body(tree, n.List, depth+1); err == nil {
				err = in.body(tree, n.ElseList, depth+1)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// withStep makes list charge, first, what running it once costs.
func (in *instrumenter) withStep(tree *parse.Tree, list *parse.ListNode, pos parse.Pos) *parse.ListNode {
	if list == nil {
		list = &parse.ListNode{NodeType: parse.NodeList, Pos: pos}
	}
	n := 1 + cost(list)
	if !in.seen[n] {
		in.seen[n] = true
		in.steps = append(in.steps, n)
	}
	id := parse.NewIdentifier(stepFunc + strconv.Itoa(n)).SetTree(tree).SetPos(pos)
	cmd := &parse.CommandNode{NodeType: parse.NodeCommand, Pos: pos, Args: []parse.Node{id}}
	action := &parse.ActionNode{NodeType: parse.NodeAction, Pos: pos,
		Pipe: &parse.PipeNode{NodeType: parse.NodePipe, Pos: pos, Cmds: []*parse.CommandNode{cmd}}}
	list.Nodes = append([]parse.Node{action}, list.Nodes...)
	return list
}

// cost is the number of steps running list once takes, not counting range
// bodies (which charge per iteration) and called templates (which charge
// when entered): a step per node, command and argument, both branches of
// an if or with counted. The functions charge by the bytes they go over on
// top of this.
func cost(list *parse.ListNode) int {
	if list == nil {
		return 0
	}
	n := 0
	for _, node := range list.Nodes {
		n++
		switch node := node.(type) {
		case *parse.ActionNode:
			n += pipeCost(node.Pipe)
		case *parse.IfNode:
			n += pipeCost(node.Pipe) + cost(node.List) + cost(node.ElseList)
		case *parse.WithNode:
			n += pipeCost(node.Pipe) + cost(node.List) + cost(node.ElseList)
		case *parse.RangeNode:
			n += pipeCost(node.Pipe) + cost(node.ElseList)
		case *parse.TemplateNode:
			n += pipeCost(node.Pipe)
		}
	}
	return n
}

// pipeDepth is how deep parenthesized pipelines nest in p.
func pipeDepth(p *parse.PipeNode) int {
	d := 0
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			if sub, ok := a.(*parse.PipeNode); ok {
				d = max(d, pipeDepth(sub))
			}
		}
	}
	return d + 1
}

func pipeCost(p *parse.PipeNode) int {
	if p == nil {
		return 0
	}
	n := len(p.Decl)
	for _, c := range p.Cmds {
		n++
		for _, a := range c.Args {
			n++
			if sub, ok := a.(*parse.PipeNode); ok {
				n += pipeCost(sub)
			}
		}
	}
	return n
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

// render executes t over data within w.
func (tp *Template) render(data map[string]string, w *budget.Work) ([]byte, error) {
	t, err := tp.t.Clone()
	if err != nil {
		return nil, provider.InvalidArgument("template %q: %v", tp.Path, err)
	}
	t.Funcs(withSteps(funcs(w), w, tp.steps))
	out := &chargedWriter{w: w}
	if err := t.Execute(out, files(data)); err != nil {
		return nil, renderError(tp.Path, err)
	}
	return out.buf.Bytes(), nil
}

// renderError keeps the code of a budget's refusal (ResourceExhausted,
// DeadlineExceeded, Canceled) and says where; anything else is the
// template's fault. text/template's messages name the action, never a value.
func renderError(path string, err error) error {
	var pe *provider.Error
	if errors.As(err, &pe) {
		return provider.Errorf(pe.Code, "template %q: %s: %s", path, lineOf(err), pe.Message)
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
