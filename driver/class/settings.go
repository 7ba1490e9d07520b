package class

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/secretfs/secretfs/provider"
)

// Prefix starts every class parameter that is secretfs's own, a prefix no
// provider uses. The driver takes these parameters out before the provider
// sees them, and refuses a class with one it does not know. Those that
// shape a volume's content (templates, hideObjects) belong to package
// driver/content; the settings below say how the driver serves the class.
const Prefix = "secretfs.dev/"

// Serving settings of a class.
const (
	// ParamRotationInterval is the class's own rotation interval (a Go
	// duration), bounded by the driver's flags.
	ParamRotationInterval = Prefix + "rotationInterval"
	// ParamStaleIfError lets a new pod be served the node cache's last good
	// content up to this age when the backend fails.
	ParamStaleIfError = Prefix + "staleIfError"
	// ParamNodeCache: "true" shares an external provider's answers through
	// the node cache; "false" never shares this class's.
	ParamNodeCache = Prefix + "nodeCache"
	// ParamOnChange says what a change of a mounted volume's content does
	// besides rewriting the files: OnChangeNone (the default) or
	// OnChangeRestart (a rolling restart of the pod's workload, when the
	// driver runs with --restart-on-change).
	ParamOnChange = Prefix + "onChange"
)

// Values of ParamOnChange.
const (
	OnChangeNone    = "none"
	OnChangeRestart = "restart"
)

// SettingParams are the serving settings' parameter names.
var SettingParams = []string{ParamRotationInterval, ParamStaleIfError, ParamNodeCache, ParamOnChange}

// Settings are a class's serving settings; the zero value asks for none.
type Settings struct {
	// RotationInterval is the class's own interval; 0: the driver's.
	RotationInterval time.Duration
	// StaleIfError is the oldest cached content a new pod may get when the
	// backend fails; 0: never.
	StaleIfError time.Duration
	// NodeCache is the class's secretfs.dev/nodeCache, when NodeCacheSet.
	NodeCache, NodeCacheSet bool
	// Restart: secretfs.dev/onChange is "restart".
	Restart bool
}

// Settings reads c's serving settings. Errors are InvalidArgument and name
// the class and the parameter.
func (c *Class) Settings() (Settings, error) {
	var s Settings
	for _, k := range SettingParams {
		v, ok := c.Parameters[k]
		if !ok {
			continue
		}
		var err error
		switch k {
		case ParamRotationInterval:
			s.RotationInterval, err = parseDuration(v)
		case ParamStaleIfError:
			s.StaleIfError, err = parseDuration(v)
		case ParamNodeCache:
			s.NodeCacheSet = true
			if s.NodeCache, err = strconv.ParseBool(strings.TrimSpace(v)); err != nil {
				err = fmt.Errorf("must be true or false")
			}
		case ParamOnChange:
			s.Restart, err = parseOnChange(v)
		}
		if err != nil {
			return Settings{}, provider.InvalidArgument("SecretProviderClass %q in namespace %q: class parameter %s: %v", c.Name, c.Namespace, k, err)
		}
	}
	return s, nil
}

// Interval is the class's own interval clamped to [min, max] (a zero min or
// max does not clamp); 0 when the class sets none.
func (s Settings) Interval(min, max time.Duration) time.Duration {
	d := s.RotationInterval
	if d == 0 {
		return 0
	}
	if min > 0 && d < min {
		d = min
	}
	if max > 0 && d > max {
		d = max
	}
	return d
}

// Stale is StaleIfError bounded by max, the driver's limit (0: the feature
// is off).
func (s Settings) Stale(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return min(s.StaleIfError, max)
}

// RestartOnChange reads c's secretfs.dev/onChange alone (what a hook
// needs, without the other settings); an invalid value is an error, as in
// Settings.
func (c *Class) RestartOnChange() (bool, error) {
	v, ok := c.Parameters[ParamOnChange]
	if !ok {
		return false, nil
	}
	restart, err := parseOnChange(v)
	if err != nil {
		return false, provider.InvalidArgument("SecretProviderClass %q in namespace %q: class parameter %s: %v", c.Name, c.Namespace, ParamOnChange, err)
	}
	return restart, nil
}

func parseOnChange(v string) (bool, error) {
	switch strings.TrimSpace(v) {
	case OnChangeNone:
		return false, nil
	case OnChangeRestart:
		return true, nil
	}
	return false, fmt.Errorf("must be %q or %q", OnChangeRestart, OnChangeNone)
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("must be a positive duration such as 30s, 5m or 1h")
	}
	return d, nil
}
