package class

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func TestSettings(t *testing.T) {
	c := &Class{Name: "c", Namespace: "ns", Parameters: map[string]string{
		ParamRotationInterval: "10s", ParamStaleIfError: "5m", ParamNodeCache: " false", "objects": "x",
	}}
	s, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.RotationInterval != 10*time.Second || s.StaleIfError != 5*time.Minute || !s.NodeCacheSet || s.NodeCache {
		t.Fatalf("settings %+v", s)
	}
	for _, tc := range []struct {
		min, max, want time.Duration
	}{{time.Minute, time.Hour, time.Minute}, {time.Second, 5 * time.Second, 5 * time.Second}, {0, 0, 10 * time.Second}} {
		if got := s.Interval(tc.min, tc.max); got != tc.want {
			t.Errorf("10s clamped to [%v,%v] = %v, want %v", tc.min, tc.max, got, tc.want)
		}
	}
	if d := s.Stale(time.Minute); d != time.Minute {
		t.Errorf("stale 5m bounded by 1m = %v", d)
	}
	if d := s.Stale(0); d != 0 {
		t.Errorf("stale with the driver's feature off = %v", d)
	}

	plain, err := (&Class{Parameters: map[string]string{"objects": "x"}}).Settings()
	if err != nil || plain != (Settings{}) || plain.Interval(time.Second, time.Hour) != 0 {
		t.Errorf("a class without settings: %+v %v", plain, err)
	}
}

func TestSettingsErrors(t *testing.T) {
	for _, params := range []map[string]string{
		{ParamRotationInterval: "-1s"},
		{ParamRotationInterval: "soon"},
		{ParamStaleIfError: "0"},
		{ParamNodeCache: "maybe"},
		{ParamOnChange: "reload"},
		{ParamOnChange: ""},
	} {
		_, err := (&Class{Name: "app", Namespace: "shop", Parameters: params}).Settings()
		if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"app" in namespace "shop"`) {
			t.Errorf("Settings(%v): %v, want InvalidArgument naming the class", params, err)
		}
		for k := range params {
			if !strings.Contains(err.Error(), k) {
				t.Errorf("error does not name %s: %v", k, err)
			}
		}
	}
}

func TestOnChange(t *testing.T) {
	for v, want := range map[string]bool{"restart": true, " restart ": true, "none": false} {
		c := &Class{Name: "app", Namespace: "shop", Parameters: map[string]string{ParamOnChange: v}}
		s, err := c.Settings()
		if err != nil || s.Restart != want {
			t.Errorf("Settings with onChange %q: %+v %v", v, s, err)
		}
		if got, err := c.RestartOnChange(); err != nil || got != want {
			t.Errorf("RestartOnChange %q = %v %v", v, got, err)
		}
	}
	if got, err := (&Class{}).RestartOnChange(); got || err != nil {
		t.Errorf("a class without onChange: %v %v", got, err)
	}
	_, err := (&Class{Name: "app", Namespace: "shop", Parameters: map[string]string{ParamOnChange: "Restart"}}).RestartOnChange()
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ParamOnChange) {
		t.Errorf("RestartOnChange of an unknown value: %v", err)
	}
}
