package types

// Error types of the application errors vmha's activities and workflows raise: one place, so a typo cannot make an
// error silently retryable.
const (
	// ErrTypeMoved: the catalog no longer matches the token a step carries (the VM changed hands). Never retried:
	// acting on the old version could start a second copy.
	ErrTypeMoved = "CatalogMoved"
	// ErrTypeCommitted: a compensation refused because the VM is committed where it runs (the attempt worked).
	ErrTypeCommitted = "Committed"
	// ErrTypeDisk: a new VM's disk cannot be made.
	ErrTypeDisk = "Disk"
	// ErrTypeDomainXML: domain XML that cannot be built, or catalog XML refused as untrusted.
	ErrTypeDomainXML = "DomainXML"
	// ErrTypeBMCSecret: a BMC password the controller cannot read.
	ErrTypeBMCSecret = "BMCSecret"
	// ErrTypeUnknownHost: a host with no running monitor (not in the inventory).
	ErrTypeUnknownHost = "UnknownHost"
	// ErrTypeBadInput: input no retry can fix; the message names the field and the value.
	ErrTypeBadInput = "BadInput"
)

// NonRetryableErrorTypes are the error types no retry policy retries.
var NonRetryableErrorTypes = []string{ErrTypeMoved, ErrTypeCommitted, ErrTypeDisk, ErrTypeDomainXML, ErrTypeBMCSecret, ErrTypeUnknownHost, ErrTypeBadInput}
