package starter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"vmha/types"
)

// ReadInventory parses an inventory file, YAML or JSON by its extension (JSON when the content starts with '{'),
// refusing unknown fields, and validates it: every problem is named with its field and value.
func ReadInventory(path string) (types.Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return types.Inventory{}, fmt.Errorf("inventory: %w", err)
	}
	inv, err := ParseInventory(data, filepath.Ext(path))
	if err != nil {
		return inv, fmt.Errorf("inventory %s: %w", path, err)
	}
	return inv, nil
}

// ParseInventory parses and validates inventory bytes; ext is ".json", ".yaml" or ".yml".
func ParseInventory(data []byte, ext string) (types.Inventory, error) {
	var inv types.Inventory
	trimmed := bytes.TrimSpace(data)
	if strings.EqualFold(ext, ".json") || bytes.HasPrefix(trimmed, []byte("{")) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&inv); err != nil {
			return inv, fmt.Errorf("json: %w", err)
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&inv); err != nil && !errors.Is(err, io.EOF) {
			return inv, fmt.Errorf("yaml: %w", err)
		}
	}
	if len(inv.Hosts) == 0 {
		return inv, errors.New("hosts: empty (applying an empty inventory would stop watching every host; retire hosts by removing them from a non-empty file)")
	}
	return inv, inv.Validate()
}
