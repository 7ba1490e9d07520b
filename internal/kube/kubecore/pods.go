package kubecore

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodInterface is what the driver does with pods: the Secret sync reads a
// pod once, on the first publish of a volume whose class syncs Secrets, to
// learn its controller (the owner of the Secrets). client-go's typed
// PodInterface satisfies it.
type PodInterface interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Pod, error)
}

// PodsGetter hands out a PodInterface per namespace.
type PodsGetter interface {
	Pods(namespace string) PodInterface
}

// Pods returns the pods of namespace.
func (c *Client) Pods(namespace string) PodInterface {
	return resource[*corev1.Pod]{c.rest, "pods", namespace, true, func() *corev1.Pod { return &corev1.Pod{} }}
}
