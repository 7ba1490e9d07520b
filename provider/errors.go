package provider

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a backend failure with the gRPC code the driver returns to kubelet.
// Message is shown to people (kubectl describe pod): it names what failed and
// what to do, and never contains a secret value or a token.
type Error struct {
	Code    codes.Code
	Message string
}

func (e *Error) Error() string { return e.Message }

// GRPCStatus lets status.FromError and the gRPC server use the code as is.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// Errorf returns an *Error with the given code.
func Errorf(code codes.Code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// InvalidArgument reports bad class parameters or object specs.
func InvalidArgument(format string, args ...any) error {
	return Errorf(codes.InvalidArgument, format, args...)
}

// NotFound reports a missing object, key, vault or class.
func NotFound(format string, args ...any) error { return Errorf(codes.NotFound, format, args...) }

// PermissionDenied reports an identity that may not read an object.
func PermissionDenied(format string, args ...any) error {
	return Errorf(codes.PermissionDenied, format, args...)
}

// Unavailable reports a backend that is down, unreachable or throttling.
func Unavailable(format string, args ...any) error {
	return Errorf(codes.Unavailable, format, args...)
}

// DeadlineExceeded reports a backend that did not answer in time.
func DeadlineExceeded(format string, args ...any) error {
	return Errorf(codes.DeadlineExceeded, format, args...)
}

// CodeOf returns the gRPC code for err: the code of an *Error or a gRPC
// status anywhere in the chain, DeadlineExceeded/Canceled for context errors,
// and Internal for anything else.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
}
