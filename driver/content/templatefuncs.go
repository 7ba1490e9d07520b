package content

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"text/template"
	"unsafe"

	"github.com/secretfs/secretfs/driver/budget"
)

// files is what a template sees as its data: the volume's files by path.
// Printing it whole ({{ . }}) is charged like any other value (printed).
type files map[string]string

// chargedWriter is a render's output: every byte is charged before it is
// kept.
type chargedWriter struct {
	buf bytes.Buffer
	w   *budget.Work
}

func (c *chargedWriter) Write(p []byte) (int, error) {
	if err := c.w.Charge(int64(len(p))); err != nil {
		return 0, err
	}
	return c.buf.Write(p)
}

// printed is an upper bound on the bytes fmt's %v writes for v, or false
// for values a template has no business printing. The values a template
// can hold are the files (a map), their contents and names, and what the
// functions return: text, numbers, booleans.
func printed(v any) (int, bool) {
	switch x := v.(type) {
	case nil:
		return len("<nil>"), true
	case string:
		return len(x), true
	case bool:
		return len("false"), true
	case files:
		n := len("map[]")
		for k, s := range x {
			n += len(k) + len(s) + 2
		}
		return n, true
	case map[string]string:
		return printed(files(x))
	}
	switch reflect.ValueOf(v).Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return 20, true
	case reflect.Float32, reflect.Float64:
		return 32, true
	}
	return 0, false
}

// printedAll is printed over args, failing on what cannot be printed.
func printedAll(args []any) (total, largest int, err error) {
	for _, a := range args {
		n, ok := printed(a)
		if !ok {
			return 0, 0, fmt.Errorf("cannot print a value of type %T", a)
		}
		total += n + 1
		largest = max(largest, n)
	}
	return total, largest, nil
}

// funcs returns the function set bound to one render's budget w (nil: for
// parsing only, never called). Every function charges the steps of the
// bytes it goes over and, before it builds a string, an upper bound of
// that string's size; errors never hold a value.
func funcs(w *budget.Work) template.FuncMap {
	// build charges n bytes, then builds.
	build := func(in, n int, f func() string) (string, error) {
		if err := w.StepBytes(in); err != nil {
			return "", err
		}
		if err := w.Charge(int64(n)); err != nil {
			return "", err
		}
		return f(), nil
	}
	// look charges the steps of reading in bytes, building nothing.
	look := func(in int) error { return w.StepBytes(in) }
	fm := template.FuncMap{
		"base64": func(s string) (string, error) {
			return build(len(s), base64.StdEncoding.EncodedLen(len(s)), func() string { return base64.StdEncoding.EncodeToString([]byte(s)) })
		},
		"base64decode": func(s string) (string, error) {
			if err := look(len(s)); err != nil {
				return "", err
			}
			if err := w.Charge(int64(base64.StdEncoding.DecodedLen(len(s)) + len(s))); err != nil {
				return "", err
			}
			v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
			if err != nil {
				return "", errors.New("the value is not valid base64")
			}
			return string(v), nil
		},
		"trim": func(s string) (string, error) { return strings.TrimSpace(s), look(len(s)) },
		"trimPrefix": func(prefix, s string) (string, error) {
			return strings.TrimPrefix(s, prefix), look(len(prefix))
		},
		"trimSuffix": func(suffix, s string) (string, error) {
			return strings.TrimSuffix(s, suffix), look(len(suffix))
		},
		// Case mapping can grow a string: at most 3 bytes per byte
		// (a 1-byte rune never maps to more than 3).
		"upper": func(s string) (string, error) {
			return build(len(s), 3*len(s), func() string { return strings.ToUpper(s) })
		},
		"lower": func(s string) (string, error) {
			return build(len(s), 3*len(s), func() string { return strings.ToLower(s) })
		},
		"quote": func(s string) (string, error) {
			return build(len(s), 4*len(s)+2, func() string { return strconv.Quote(s) })
		},
		"squote": func(s string) (string, error) {
			return build(len(s), 4*len(s)+2, func() string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" })
		},
		"json": func(v any) (string, error) {
			n, ok := printed(v)
			if !ok {
				return "", fmt.Errorf("json cannot print a value of type %T", v)
			}
			if f, isFiles := v.(files); isFiles {
				v = map[string]string(f)
				n += 8 * len(f)
			}
			return buildJSON(w, v, 6*n+16)
		},
		"replace": func(old, new, s string) (string, error) {
			n := len(s)
			if len(new) > len(old) {
				count := len(s) + 1
				if old != "" {
					if err := look(len(s)); err != nil {
						return "", err
					}
					count = strings.Count(s, old)
				}
				n += count * (len(new) - len(old))
			}
			return build(len(s), n, func() string { return strings.ReplaceAll(s, old, new) })
		},
		"indent": func(n int, s string) (string, error) {
			if n < 0 || n > maxPad {
				return "", fmt.Errorf("indent takes 0 to %d spaces", maxPad)
			}
			if err := look(len(s)); err != nil {
				return "", err
			}
			pad := strings.Repeat(" ", n)
			return build(len(s), len(s)+(strings.Count(s, "\n")+1)*n, func() string {
				return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
			})
		},
		"default": func(def, s string) string {
			if s == "" {
				return def
			}
			return s
		},
		// The message is literal text of the template (checkCalls), never a value.
		"required": func(msg, s string) (string, error) {
			if s == "" {
				return "", errors.New(msg)
			}
			return s, nil
		},
		// Builtins that build strings, replaced with versions that charge
		// an upper bound before they build.
		"print": func(args ...any) (string, error) {
			n, _, err := printedAll(args)
			if err != nil {
				return "", err
			}
			return build(n, n, func() string { return fmt.Sprint(args...) })
		},
		"println": func(args ...any) (string, error) {
			n, _, err := printedAll(args)
			if err != nil {
				return "", err
			}
			return build(n, n+1, func() string { return fmt.Sprintln(args...) })
		},
		"printf": func(format string, args ...any) (string, error) {
			if err := checkFormat(format); err != nil {
				return "", err
			}
			total, largest, err := printedAll(args)
			if err != nil {
				return "", err
			}
			// Each verb prints one argument (any, with %[n]), escaped at
			// most 6 bytes a byte (%q, % #x writes "0x41 "), padded to at
			// most maxPad; extra arguments are printed after.
			verbs := strings.Count(format, "%")
			n := len(format) + verbs*(maxPad+6*largest+32) + 6*total + 64
			return build(total+len(format), n, func() string { return fmt.Sprintf(format, args...) })
		},
		"html": escaper(w, 6, template.HTMLEscaper),
		"js":   escaper(w, 6, template.JSEscaper),
		"urlquery": escaper(w, 3, func(args ...any) string {
			return url.QueryEscape(fmt.Sprint(args...))
		}),
		// Builtins whose time grows with their arguments, replaced with
		// versions that charge it.
		"eq": func(a any, bs ...any) (bool, error) {
			for _, b := range bs {
				c, err := compare(w, a, b, true)
				if err != nil {
					return false, err
				}
				if c == 0 {
					return true, nil
				}
			}
			return false, nil
		},
		"ne": func(a, b any) (bool, error) { c, err := compare(w, a, b, true); return c != 0, err },
		"lt": func(a, b any) (bool, error) { c, err := compare(w, a, b, false); return c < 0, err },
		"le": func(a, b any) (bool, error) { c, err := compare(w, a, b, false); return c <= 0, err },
		"gt": func(a, b any) (bool, error) { c, err := compare(w, a, b, false); return c > 0, err },
		"ge": func(a, b any) (bool, error) { c, err := compare(w, a, b, false); return c >= 0, err },
		"call": func(any, ...any) (any, error) {
			return nil, errors.New("call is not available in secretfs templates")
		},
		rangeFunc: func(v any) (any, error) { return v, chargeRange(w, v) },
		outFunc: func(v any) (any, error) {
			n, ok := printed(v)
			if !ok {
				return nil, fmt.Errorf("cannot print a value of type %T", v)
			}
			if err := w.Charge(int64(n)); err != nil {
				return nil, err
			}
			return v, nil
		},
	}
	return fm
}

// withSteps adds the step functions of tp's rewritten trees (stepFunc+N
// charges N steps) to fm.
func withSteps(fm template.FuncMap, w *budget.Work, steps []int) template.FuncMap {
	for _, n := range steps {
		fm[stepFunc+strconv.Itoa(n)] = func() (string, error) { return "", w.Step(int64(n)) }
	}
	return fm
}

// escaper wraps one of text/template's escapers: its arguments are printed
// and escaped, at most factor bytes a byte, charged first.
func escaper(w *budget.Work, factor int, f func(...any) string) func(...any) (string, error) {
	return func(args ...any) (string, error) {
		n, _, err := printedAll(args)
		if err != nil {
			return "", err
		}
		if err := w.StepBytes(n); err != nil {
			return "", err
		}
		if err := w.Charge(int64((factor + 1) * n)); err != nil {
			return "", err
		}
		return f(args...), nil
	}
}

// buildJSON charges n and prints v as JSON without HTML escaping.
func buildJSON(w *budget.Work, v any, n int) (string, error) {
	if err := w.StepBytes(n / 6); err != nil {
		return "", err
	}
	if err := w.Charge(int64(n)); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", errors.New("the value cannot be printed as JSON")
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// compare orders a and b as text/template's comparisons do for the values
// a template holds (text, booleans, integers, floats; nil only for
// equality), charging the steps of the bytes compared.
func compare(w *budget.Work, a, b any, equality bool) (int, error) {
	if sa, ok := a.(string); ok {
		sb, ok := b.(string)
		if !ok {
			return 0, errors.New("incompatible types for comparison")
		}
		if err := w.StepBytes(min(len(sa), len(sb))); err != nil {
			return 0, err
		}
		return strings.Compare(sa, sb), nil
	}
	if err := w.Step(1); err != nil {
		return 0, err
	}
	if a == nil || b == nil {
		if !equality {
			return 0, errors.New("cannot order nil")
		}
		if a == nil && b == nil {
			return 0, nil
		}
		return 1, nil
	}
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	switch {
	case va.Kind() == reflect.Bool && vb.Kind() == reflect.Bool:
		if !equality {
			return 0, errors.New("invalid type for ordering: bool")
		}
		if va.Bool() == vb.Bool() {
			return 0, nil
		}
		return 1, nil
	case va.CanInt() && vb.CanInt():
		return cmpOrdered(va.Int(), vb.Int()), nil
	case va.CanUint() && vb.CanUint():
		return cmpOrdered(va.Uint(), vb.Uint()), nil
	case va.CanInt() && vb.CanUint():
		if va.Int() < 0 {
			return -1, nil
		}
		return cmpOrdered(uint64(va.Int()), vb.Uint()), nil
	case va.CanUint() && vb.CanInt():
		if vb.Int() < 0 {
			return 1, nil
		}
		return cmpOrdered(va.Uint(), uint64(vb.Int())), nil
	case va.CanFloat() && vb.CanFloat():
		return cmpOrdered(va.Float(), vb.Float()), nil
	}
	return 0, errors.New("incompatible types for comparison")
}

func cmpOrdered[T int64 | uint64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// chargeRange charges what ranging over v costs before the first
// iteration: for a map, text/template copies its n keys (a reflect.Value
// each) and sorts them, n·log2(n) comparisons; slices, arrays and integers
// cost nothing up front (each iteration charges its body's steps).
func chargeRange(w *budget.Work, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Map {
		return nil
	}
	n := rv.Len()
	if err := w.Step(int64(n) * int64(1+bits.Len(uint(n)))); err != nil {
		return err
	}
	return w.Charge(int64(n) * int64(unsafe.Sizeof(reflect.Value{})))
}
