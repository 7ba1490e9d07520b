package kubernetes

import (
	"context"
	"errors"
	"sort"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/provider"
)

// maxListPage is the most Secrets one list request asks for. A page holds
// the Secrets' contents, so it is also what one answer can bring beyond the
// volume's file limit before the count stops the listing.
const maxListPage = 100

// listed is the outcome of listing one selector.
type listed struct {
	secrets []*corev1.Secret // sorted by name
	rv      string           // the list's resourceVersion (the watch starts there)
	err     error
}

// listAll lists the Secrets each selector selects, as the pod, page by
// page. Every page's body is charged to budget as it is read; the keys of
// the selected Secrets are counted as the pages arrive (a Secret without
// keys counts as one: it makes no file, but the listing reads it, and
// thousands of empty Secrets would otherwise page on unbounded), and the
// listing stops ResourceExhausted as soon as they, together with earlier
// selectors', exceed the volume's file limit, before another page is asked
// for. A page never asks for more Secrets than the files still allowed plus
// one.
func (p *Provider) listAll(ctx context.Context, token string, pod provider.Pod, sels []string, budget *provider.Budget) map[string]listed {
	out := make(map[string]listed, len(sels))
	if len(sels) == 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(provider.WithBudget(withToken(ctx, token), budget), p.opts.RequestTimeout)
	defer cancel()
	maxFiles := budget.Limits().MaxFiles
	files := 0
	for _, sel := range sels {
		l := p.list(ctx, pod, sel, maxFiles, &files)
		out[sel] = l
		if l.err != nil {
			break // the fetch fails: list no more
		}
	}
	return out
}

func (p *Provider) list(ctx context.Context, pod provider.Pod, sel string, maxFiles int, files *int) listed {
	var l listed
	opts := metav1.ListOptions{LabelSelector: sel}
	for {
		opts.Limit = int64(min(maxListPage, max(maxFiles-*files, 0)+1))
		page, err := p.client.ListSecrets(ctx, pod.Namespace, opts)
		if err != nil {
			l.err = listError(err, pod, sel)
			return l
		}
		if l.rv == "" {
			l.rv = page.ResourceVersion
		}
		for i := range page.Items {
			s := &page.Items[i]
			*files += max(1, len(s.Data))
			l.secrets = append(l.secrets, s)
		}
		if *files > maxFiles {
			l.err = provider.Errorf(codes.ResourceExhausted,
				"labelSelector %q selects Secrets with more than %d keys (a Secret without keys counts as one), the per-volume file limit (driver flag --max-files): narrow the selector or split the class",
				provider.Clip(sel, 80), maxFiles)
			return l
		}
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	sort.Slice(l.secrets, func(i, j int) bool { return l.secrets[i].Name < l.secrets[j].Name })
	return l
}

// listError turns a client error of a list into a provider error that says
// what to do.
func listError(err error, pod provider.Pod, sel string) error {
	what := "Secrets with labelSelector " + quote(sel) + " in namespace " + pod.Namespace
	var pe *provider.Error
	switch {
	case errors.As(err, &pe) && (pe.Code == codes.ResourceExhausted || pe.Code == codes.Unavailable):
		return provider.Errorf(pe.Code, "list of %s: %s", what, pe.Message) // the volume's or the node's bound (Budget)
	case apierrors.IsForbidden(err):
		return provider.PermissionDenied(
			"%s may not list Secrets in namespace %s (needed for labelSelector %s): bind it to a Role in namespace %s "+
				"with apiGroups [\"\"], resources [secrets], verbs [list, watch] and no resourceNames (a list is never limited by name)",
			saName(pod), pod.Namespace, quote(sel), pod.Namespace)
	case apierrors.IsBadRequest(err) || apierrors.IsInvalid(err):
		return provider.InvalidArgument("list of %s: the API server refused the selector: %v", what, err)
	}
	return apiError(err, "list", pod, "(labelSelector "+quote(sel)+")")
}

func quote(s string) string { return `"` + provider.Clip(s, 80) + `"` }

// selectorVersionID is the ID of a selector's listing in Result.Versions;
// its Version is the list's resourceVersion.
func selectorVersionID(sel string) string { return "selector/" + sel }
