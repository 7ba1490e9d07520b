// Package fake is the in-process fake backend, `provider: fake` in a
// SecretProviderClass. It serves secrets written in the class itself, values
// derived deterministically from the pod's namespace, or files an operator
// places in a data directory, and it can inject latency, failures, throttling
// and denied identities. It is meant for demos, tests and load runs; it never
// talks to the network.
//
// # Class parameters
//
//	objects      required. The objects to mount, in the Azure provider's form
//	             (`array:` of YAML documents in strings) or as a plain YAML list.
//	latency      Go duration (0s..10m) added to every Fetch; honours
//	             cancellation of the request. Example: "250ms".
//	failFirst    N: the first N Fetch calls with valid parameters for this
//	             class in this namespace fail with failCode (counted per fake
//	             instance, that is per driver process).
//	failCode     gRPC code name for failFirst, such as Unavailable (default),
//	             PermissionDenied, NotFound or DeadlineExceeded. Needs failFirst.
//	deny         comma-separated service-account names whose pods get
//	             PermissionDenied, to simulate a revoked identity.
//	rateLimit    requests per second (a decimal above 0) allowed for this class
//	             in this namespace, as a token bucket holding one second's
//	             worth; over it a Fetch fails Unavailable with
//	             "throttled (429)", like Key Vault.
//
// Unknown parameters are errors, so a misspelt one is reported rather than
// silently ignored; keys prefixed csi.storage.k8s.io/ or
// secrets-store.csi.k8s.io/ are accepted and ignored. Fault checks run in
// the order latency, failFirst, rateLimit, deny. Every invalid value is
// InvalidArgument with a message naming the parameter, item and field.
//
// # Object fields
//
//	objectName      required. 1-127 characters of A-Z a-z 0-9 . _ -, not
//	                starting with '.'.
//	objectAlias     file name; default objectName. May contain '/' for
//	                sub-directories; must be relative and clean, its
//	                components of A-Z a-z 0-9 . _ - and none starting with
//	                ".." (reserved by the driver). Two objects may not share a
//	                file name, and a file name may not be another's directory.
//	filePermission  octal mode as the Azure provider accepts, e.g. "0644" or
//	                "0440", at most 0777. Default: the volume's default mode,
//	                else 0644.
//	value           literal content.
//	objectEncoding  how value is written: utf-8 (default), base64 or hex
//	                (for binary content).
//	generate        N: N printable bytes (A-Z a-z 0-9 - _) derived from the
//	                namespace, objectName, objectVersion and seed; 1..65536.
//	                The same inputs always give the same value; another seed
//	                or objectVersion gives another value. Not with value.
//	seed            optional string for generate.
//	objectVersion   optional, same characters as objectName; changes the
//	                generated value.
//
//	objectNamePrefix instead of objectName: selects the data files of the
//	                namespace (see Data directory) whose names start with it,
//	                each a file of its own name (links, directories and names
//	                starting with '.' are not selected); only filePermission
//	                goes with it. Counted against --max-files before any file
//	                is read; a name another item writes is InvalidArgument.
//	                Without a data directory it selects nothing.
//
// Scalars are taken as written, as the Azure provider does: an unquoted
// `filePermission: 0640` is the mode 0640 and `value: yes` the text "yes".
// Unknown fields are errors.
//
// An object with neither value nor generate must be served by a data file,
// or Fetch fails NotFound naming the object.
//
// # Data directory
//
// When the driver runs with --fake-data-dir=DIR (a node setting, never a
// class parameter, so that class authors cannot read host files), the file
// DIR/<namespace>/<objectName> overrides the object's value whenever it
// exists. It is read on every Fetch, so a test rotates a secret by replacing
// the file; write a temporary file whose name starts with '.' (no object
// name can) and rename it into place, so the fake never reads a half-written
// value. The namespace directory and the file are opened without following
// symbolic links; links, devices, FIFOs and files over 1 MiB are refused
// with FailedPrecondition.
//
// # Versions and counters
//
// Each Result has one ObjectVersion per object: ID is the file name and
// Version a 16-hex-digit SHA-256 prefix of the content (salted with the
// namespace and object name), so rotation sees exactly which files changed.
// Calls and ObjectFetches count backend work for tests and load runs.
//
// # Example
//
//	apiVersion: secrets-store.csi.x-k8s.io/v1
//	kind: SecretProviderClass
//	metadata:
//	  name: demo
//	  namespace: default
//	spec:
//	  provider: fake
//	  parameters:
//	    objects: |
//	      array:
//	        - |
//	          objectName: db-password
//	          generate: 32
//	          filePermission: "0440"
//	        - |
//	          objectName: tls-crt
//	          objectAlias: tls/tls.crt
//	          value: "-----BEGIN CERTIFICATE-----..."
//
// A complete class with five objects is in testdata/example-class.yaml.
package fake
