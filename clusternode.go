package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"vmha/infra/config"
	"vmha/infra/temporalserver"
)

// startClusterNode runs vmha server's Temporal as a node of a cluster on PostgreSQL (VMHA_PERSISTENCE=postgres).
func startClusterNode(ctx context.Context, s config.Settings, host string, port int, tlsFiles *temporalserver.TLSFiles, logger *slog.Logger) (*temporalserver.Server, error) {
	password, err := postgresPassword(s)
	if err != nil {
		return nil, err
	}
	return temporalserver.StartClusterNode(ctx, temporalserver.ClusterOptions{
		ListenAddress:    host,
		BroadcastAddress: s.ClusterBroadcastAddress,
		FrontendPort:     port,
		UIPort:           s.UIPort,
		UIAddress:        s.UIAddress,
		UIWriteActions:   s.UIWriteActions,
		TLS:              tlsFiles,
		AllowPlaintext:   s.ServerPlaintext,
		Namespace:        s.Namespace,
		HistoryShards:    s.HistoryShards,
		Postgres: temporalserver.Postgres{
			Address:            s.PostgresAddress,
			User:               s.PostgresUser,
			Password:           password,
			Database:           s.PostgresDatabase,
			VisibilityDatabase: s.PostgresVisibilityDB,
			TLSCAFile:          s.PostgresTLSCA,
		},
		Logger: logger,
	})
}

// postgresPassword is VMHA_POSTGRES_PASSWORD, or the first line of VMHA_POSTGRES_PASSWORD_FILE.
func postgresPassword(s config.Settings) (string, error) {
	if s.PostgresPasswordFile == "" {
		return s.PostgresPassword, nil
	}
	data, err := os.ReadFile(s.PostgresPasswordFile)
	if err != nil {
		return "", fmt.Errorf("%s_POSTGRES_PASSWORD_FILE=%q: %w", config.Prefix, s.PostgresPasswordFile, err)
	}
	password, _, _ := strings.Cut(string(data), "\n")
	password = strings.TrimSuffix(password, "\r")
	if password == "" {
		return "", fmt.Errorf("%s_POSTGRES_PASSWORD_FILE=%q: empty first line", config.Prefix, s.PostgresPasswordFile)
	}
	return password, nil
}
