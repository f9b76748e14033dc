package activities

import (
	"fmt"
	"os"
	"strings"

	"vmha/types"
)

// BMCPassword resolves the secret an inventory entry names. Only workers call it: the password itself never
// enters a workflow. Errors name the variable or file, never the content.
func BMCPassword(host string, spec types.BMCSpec) (string, error) {
	switch {
	case spec.PasswordEnv != "" && spec.PasswordFile != "":
		return "", fmt.Errorf("host %s: bmc.passwordEnv %q and bmc.passwordFile %q: set only one", host, spec.PasswordEnv, spec.PasswordFile)
	case spec.PasswordEnv != "":
		v, ok := os.LookupEnv(spec.PasswordEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("host %s: bmc.passwordEnv %q: variable is not set on this worker", host, spec.PasswordEnv)
		}
		return v, nil
	case spec.PasswordFile != "":
		b, err := os.ReadFile(spec.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("host %s: bmc.passwordFile %q: %w", host, spec.PasswordFile, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("host %s: bmc.passwordFile %q: file is empty", host, spec.PasswordFile)
		}
		return v, nil
	}
	return "", fmt.Errorf("host %s: bmc: name the password with passwordEnv or passwordFile", host)
}
