package azure

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// Class parameter names, spelled exactly as the upstream Azure provider
// spells them so existing SecretProviderClass objects work unchanged.
const (
	paramKeyvaultName           = "keyvaultName"
	paramTenantID               = "tenantID"
	paramTenantIDDeprecated     = "tenantId"
	paramCloudName              = "cloudName"
	paramClientID               = "clientID"
	paramUseVMManagedIdentity   = "useVMManagedIdentity"
	paramUserAssignedIdentityID = "userAssignedIdentityID"
	paramUsePodIdentity         = "usePodIdentity"
	paramCloudEnvFileName       = "cloudEnvFileName"
	paramObjects                = "objects"

	// nodePublishSecretRef keys for a service principal.
	secretClientID     = "clientid"
	secretClientSecret = "clientsecret"

	// WorkloadIdentityAudience is the audience of the service-account token
	// that is exchanged for an Entra ID token (CSIDriver spec.tokenRequests).
	WorkloadIdentityAudience = "api://AzureADTokenExchange"
)

const (
	typeSecret = "secret"
	typeKey    = "key"
	typeCert   = "cert"

	formatPEM = "pem"
	formatPFX = "pfx"

	encodingUTF8   = "utf-8"
	encodingHex    = "hex"
	encodingBase64 = "base64"

	contentTypePEM = "application/x-pem-file"
	contentTypePFX = "application/x-pkcs12"
)

// Azure naming rules: vault names are 3-24 alphanumerics and hyphens;
// object names 1-127 alphanumerics and hyphens; versions are opaque ids
// (32 hex digits in practice). Loops rather than regular expressions: a
// counted repetition such as {1,127} compiles into that many copies of its
// class, and the package's expressions held some 290 KB of the driver's
// heap from start-up on, on every node, whether or not a class used Azure.
func validVaultName(s string) bool     { return allOf(s, 3, 24, alnumHyphen) }
func validObjectName(s string) bool    { return allOf(s, 1, 127, alnumHyphen) }
func validObjectVersion(s string) bool { return allOf(s, 1, 64, alnum) }

// validTenant: a letter or digit, then letters, digits, '.' and '-', at
// most 128 characters.
func validTenant(s string) bool {
	return s != "" && alnum(s[0]) && allOf(s[1:], 0, 127, func(c byte) bool { return alnumHyphen(c) || c == '.' })
}

// allOf reports whether s has min to max bytes, each of which ok accepts.
func allOf(s string, min, max int, ok func(byte) bool) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func alnumHyphen(c byte) bool { return alnum(c) || c == '-' }

// object is one item of the `objects` parameter.
type object struct {
	ObjectName           string `yaml:"objectName"`
	ObjectAlias          string `yaml:"objectAlias"`
	ObjectVersion        string `yaml:"objectVersion"`
	ObjectVersionHistory int32  `yaml:"objectVersionHistory"`
	ObjectType           string `yaml:"objectType"`
	ObjectFormat         string `yaml:"objectFormat"`
	ObjectEncoding       string `yaml:"objectEncoding"`
	FilePermission       string `yaml:"filePermission"`
	// Optional: a missing object is left out rather than failing the
	// volume. The driver handles this itself for every provider (and takes
	// the field out first); honoured here too so that the provider served
	// on its own to another CSI driver means the same thing.
	Optional bool `yaml:"optional"`
	// A selector instead of objectName (objectType secret only): every
	// enabled secret of the vault whose name starts with ObjectNamePrefix,
	// matches ObjectNameRegex (whole name, RE2) and carries every tag of
	// ObjectTags, each as a file named after the secret. See select.go.
	ObjectNamePrefix string            `yaml:"objectNamePrefix"`
	ObjectNameRegex  string            `yaml:"objectNameRegex"`
	ObjectTags       map[string]string `yaml:"objectTags"`

	mode  os.FileMode    // parsed FilePermission or the request default
	regex *regexp.Regexp // compiled ObjectNameRegex, anchored
}

// fileName is the alias if set, else the object name (as upstream).
func (o *object) fileName() string {
	if o.ObjectAlias != "" {
		return o.ObjectAlias
	}
	return o.ObjectName
}

// id is the object id shown in status (`<type>/<name>`, as upstream).
func (o *object) id() string { return o.ObjectType + "/" + o.ObjectName }

// latest reports whether the object asks for the newest version.
func (o *object) latest() bool { return o.ObjectVersion == "" || o.ObjectVersion == "latest" }

// sdkVersion is the version passed to Key Vault ("" means newest).
func (o *object) sdkVersion() string {
	if o.latest() {
		return ""
	}
	return o.ObjectVersion
}

func (o *object) describe() string {
	if o.isSelector() {
		return "secrets selected by " + o.selectorText()
	}
	v := o.ObjectVersion
	if v == "" {
		v = "latest"
	}
	return fmt.Sprintf("%s %q (version %s)", o.ObjectType, o.ObjectName, v)
}

// cloud names accepted in cloudName (case-insensitive, as go-autorest did).
type cloudEnv struct {
	name          string
	vaultSuffix   string
	authorityHost string
}

var clouds = map[string]cloudEnv{
	"AZUREPUBLICCLOUD":       {"AzurePublicCloud", "vault.azure.net", "https://login.microsoftonline.com/"},
	"AZURECHINACLOUD":        {"AzureChinaCloud", "vault.azure.cn", "https://login.chinacloudapi.cn/"},
	"AZUREUSGOVERNMENTCLOUD": {"AzureUSGovernmentCloud", "vault.usgovcloudapi.net", "https://login.microsoftonline.us/"},
}

// identityMode is how the volume authenticates to Entra ID.
type identityMode string

const (
	modeWorkload         identityMode = "workload identity"
	modeManaged          identityMode = "managed identity"
	modeServicePrincipal identityMode = "service principal"
)

// config is a validated mount request.
type config struct {
	vaultName string
	tenantID  string
	cloud     cloudEnv
	mode      identityMode
	// clientID is the workload identity client, the user-assigned managed
	// identity client (empty for system-assigned), or the service principal.
	clientID     string
	clientSecret string // service principal only; never logged
	objects      []*object
}

// parseConfig validates class parameters, the nodePublishSecretRef data and
// the objects, without any network access.
func parseConfig(params, secrets map[string]string, defaultMode os.FileMode) (*config, error) {
	get := func(k string) string { return strings.TrimSpace(params[k]) }
	c := &config{}

	c.vaultName = get(paramKeyvaultName)
	if c.vaultName == "" {
		return nil, provider.InvalidArgument("parameter keyvaultName is not set: name the Key Vault to read from")
	}
	if !validVaultName(c.vaultName) {
		return nil, provider.InvalidArgument("parameter keyvaultName %q is not a valid Key Vault name: use 3-24 letters, digits and hyphens", c.vaultName)
	}

	c.tenantID = get(paramTenantID)
	if c.tenantID == "" {
		c.tenantID = get(paramTenantIDDeprecated)
	}
	if c.tenantID == "" {
		return nil, provider.InvalidArgument("parameter tenantID is not set: give the Entra ID tenant of the Key Vault")
	}
	if !validTenant(c.tenantID) {
		return nil, provider.InvalidArgument("parameter tenantID %q is not a tenant id or domain", c.tenantID)
	}

	if f := get(paramCloudEnvFileName); f != "" {
		return nil, provider.InvalidArgument("parameter cloudEnvFileName is not supported: custom clouds are configured on the driver (--azure-vault-suffix, --azure-authority-host)")
	}
	cloudName := get(paramCloudName)
	if cloudName == "" {
		cloudName = "AzurePublicCloud"
	}
	cloud, ok := clouds[strings.ToUpper(cloudName)]
	if !ok {
		return nil, provider.InvalidArgument("parameter cloudName %q is not supported: use AzurePublicCloud, AzureChinaCloud or AzureUSGovernmentCloud", cloudName)
	}
	c.cloud = cloud

	if err := c.parseIdentity(get, secrets); err != nil {
		return nil, err
	}

	objs, err := parseObjects(params[paramObjects], defaultMode)
	if err != nil {
		return nil, err
	}
	c.objects = objs
	return c, nil
}

func parseBool(name, v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, provider.InvalidArgument("parameter %s is %q: use \"true\" or \"false\"", name, v)
	}
	return b, nil
}

// parseIdentity picks exactly one identity mode.
func (c *config) parseIdentity(get func(string) string, secrets map[string]string) error {
	podIdentity, err := parseBool(paramUsePodIdentity, get(paramUsePodIdentity))
	if err != nil {
		return err
	}
	if podIdentity {
		return provider.InvalidArgument("usePodIdentity is not supported (AAD pod identity is deprecated upstream): use workload identity (clientID) instead")
	}
	useMI, err := parseBool(paramUseVMManagedIdentity, get(paramUseVMManagedIdentity))
	if err != nil {
		return err
	}
	wiClient := get(paramClientID)
	uami := get(paramUserAssignedIdentityID)
	spID := strings.TrimSpace(secrets[secretClientID])
	spSecret := secrets[secretClientSecret]

	var modes []string
	if wiClient != "" {
		modes = append(modes, "clientID (workload identity)")
	}
	if useMI {
		modes = append(modes, "useVMManagedIdentity (managed identity)")
	}
	if spID != "" || spSecret != "" {
		modes = append(modes, "nodePublishSecretRef clientid/clientsecret (service principal)")
	}
	switch len(modes) {
	case 0:
		return provider.InvalidArgument("no identity configured: set clientID (workload identity), useVMManagedIdentity: \"true\" (managed identity), or a nodePublishSecretRef with clientid and clientsecret (service principal)")
	case 1:
	default:
		return provider.InvalidArgument("more than one identity configured: %s; set exactly one", strings.Join(modes, ", "))
	}
	if uami != "" && !useMI {
		return provider.InvalidArgument("parameter userAssignedIdentityID is set but useVMManagedIdentity is not \"true\"")
	}
	switch {
	case wiClient != "":
		c.mode, c.clientID = modeWorkload, wiClient
	case useMI:
		c.mode, c.clientID = modeManaged, uami
	default:
		if spID == "" || spSecret == "" {
			return provider.InvalidArgument("nodePublishSecretRef must contain both %q and %q for a service principal", secretClientID, secretClientSecret)
		}
		c.mode, c.clientID, c.clientSecret = modeServicePrincipal, spID, spSecret
	}
	return nil
}

// parseObjects decodes and validates the `objects` parameter.
func parseObjects(param string, defaultMode os.FileMode) ([]*object, error) {
	var objs []*object
	if err := provider.DecodeObjects(param, &objs); err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		return nil, provider.InvalidArgument("parameter objects lists no objects")
	}
	if defaultMode == 0 {
		defaultMode = provider.DefaultFileMode
	}
	files := map[string]int{}
	for i, o := range objs {
		if o == nil {
			return nil, provider.InvalidArgument("objects item %d is empty", i)
		}
		if err := o.normalize(defaultMode); err != nil {
			return nil, provider.InvalidArgument("objects item %d: %v", i, err)
		}
		if o.isSelector() {
			continue // its file names are known once the vault is listed
		}
		// A file and a version-history directory of the same name would collide.
		for _, f := range o.fileNames() {
			if j, dup := files[f]; dup {
				return nil, provider.InvalidArgument("objects items %d and %d both write file %q: set objectAlias on one of them", j, i, f)
			}
			files[f] = i
		}
	}
	return objs, nil
}

// fileNames are the paths an object claims: the file, or with a version
// history the directory of numbered files.
func (o *object) fileNames() []string {
	if o.ObjectVersionHistory > 1 {
		return []string{o.fileName(), o.fileName() + "/"}
	}
	return []string{o.fileName()}
}

func (o *object) normalize(defaultMode os.FileMode) error {
	for _, f := range []*string{&o.ObjectName, &o.ObjectAlias, &o.ObjectVersion, &o.ObjectType, &o.ObjectFormat, &o.ObjectEncoding, &o.FilePermission} {
		*f = strings.TrimSpace(*f)
	}
	if o.isSelector() {
		if err := o.normalizeSelector(); err != nil {
			return err
		}
	} else if !validObjectName(o.ObjectName) {
		if o.ObjectName == "" {
			return fmt.Errorf("objectName is not set")
		}
		return fmt.Errorf("objectName %q is not a valid Key Vault object name (1-127 letters, digits and hyphens)", o.ObjectName)
	}
	switch o.ObjectType {
	case typeSecret, typeKey, typeCert:
	case "":
		return fmt.Errorf("objectType of %q is not set: use secret, key or cert", o.ObjectName)
	default:
		return fmt.Errorf("objectType %q of %q is not supported: use secret, key or cert", o.ObjectType, o.ObjectName)
	}
	if !o.latest() && !validObjectVersion(o.ObjectVersion) {
		return fmt.Errorf("objectVersion %q of %q is not a Key Vault version id", o.ObjectVersion, o.ObjectName)
	}
	if o.ObjectVersionHistory < 0 {
		return fmt.Errorf("objectVersionHistory of %q is negative", o.ObjectName)
	}
	if o.ObjectVersionHistory > maxVersionHistory {
		return fmt.Errorf("objectVersionHistory of %q is %d: at most %d versions are supported", o.ObjectName, o.ObjectVersionHistory, maxVersionHistory)
	}
	if o.ObjectFormat != "" {
		f := strings.ToLower(o.ObjectFormat)
		if f != formatPEM && f != formatPFX {
			return fmt.Errorf("objectFormat %q of %q is not supported: use pem or pfx", o.ObjectFormat, o.ObjectName)
		}
		if f == formatPFX && o.ObjectType != typeSecret {
			return fmt.Errorf("objectFormat pfx of %q is only supported for objectType secret", o.ObjectName)
		}
		o.ObjectFormat = f
	}
	if o.ObjectEncoding != "" {
		if o.ObjectType != typeSecret {
			return fmt.Errorf("objectEncoding of %q is only supported for objectType secret", o.ObjectName)
		}
		e := strings.ToLower(o.ObjectEncoding)
		if e != encodingUTF8 && e != encodingHex && e != encodingBase64 {
			return fmt.Errorf("objectEncoding %q of %q is not supported: use utf-8, hex or base64", o.ObjectEncoding, o.ObjectName)
		}
		o.ObjectEncoding = e
	}
	if o.isSelector() {
		// Secret names are valid file names; nothing more to check.
	} else if err := validFileName(o.fileName()); err != nil {
		return fmt.Errorf("file name %q of %q: %v", o.fileName(), o.ObjectName, err)
	}
	o.mode = defaultMode
	if o.FilePermission != "" {
		m, err := provider.ParseFileMode(o.FilePermission)
		if err != nil {
			return fmt.Errorf("filePermission %q of %q %v", provider.Clip(o.FilePermission, 80), o.ObjectName, err)
		}
		o.mode = m
	}
	return nil
}

// maxVersionHistory bounds the files one object can produce.
const maxVersionHistory = 100

// validFileName keeps a file inside the volume: the one path check of
// package provider, and no backslash (a Windows separator in a class written
// for the Azure provider's Windows nodes would be a different file here).
func validFileName(name string) error {
	if strings.ContainsRune(name, '\\') {
		return fmt.Errorf("must not contain a backslash")
	}
	return provider.ValidatePath(name)
}
