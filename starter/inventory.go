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
		var more json.RawMessage
		if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
			return types.Inventory{}, fmt.Errorf("json: a second value after the inventory (at byte %d): an inventory file holds one object", dec.InputOffset()-int64(len(more)))
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&inv); err != nil && !errors.Is(err, io.EOF) {
			return inv, fmt.Errorf("yaml: %w", err)
		}
		// Only the first document would be applied, and every host listed in the others retired.
		for n := 2; ; n++ {
			var doc yaml.Node
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return types.Inventory{}, fmt.Errorf("yaml document %d: %w", n, err)
			}
			if len(doc.Content) > 0 && doc.Content[0].Tag != "!!null" {
				return types.Inventory{}, fmt.Errorf("yaml: document %d (line %d) after the first: an inventory file holds one document; put every host in one 'hosts:' list", n, doc.Line)
			}
		}
	}
	if len(inv.Hosts) == 0 {
		return inv, errors.New("hosts: empty (applying an empty inventory would stop watching every host; retire hosts by removing them from a non-empty file)")
	}
	return inv, inv.Validate()
}
