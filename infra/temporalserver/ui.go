package temporalserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/temporalio/ui-server/v2/server/api"
	"github.com/temporalio/ui-server/v2/server/auth"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	"github.com/temporalio/ui-server/v2/server/cors"
	"github.com/temporalio/ui-server/v2/server/csrf"
	"github.com/temporalio/ui-server/v2/server/headers"
	"github.com/temporalio/ui-server/v2/server/route"
	"github.com/temporalio/ui-server/v2/ui"
)

// webUI is the Temporal Web UI served from our own listener.
//
// It assembles the same routes and middleware as ui-server's server.NewServer (v2.54.1) instead of calling it,
// because that server's Start ends the whole process (echo's Logger.Fatal) when its port is taken, and offers no way to
// hand it a listener. Here a taken port is an ordinary error from Start.
type webUI struct {
	http *http.Server
	done chan struct{}
}

// The UI dials the frontend with the server's own certificate when sec is set (it acts with the server's role),
// and refuses every write (terminate, cancel, signal, reset, start, batch) unless writeActions.
func startWebUI(ln net.Listener, frontendAddress, namespace string, sec *serverTLS, writeActions bool, logger *slog.Logger) (*webUI, error) {
	cfg := &uiconfig.Config{
		TemporalGRPCAddress: frontendAddress,
		EnableUI:            true,
		DefaultNamespace:    namespace,
		// The UI is reached over plain HTTP (loopback or a trusted network), so its CSRF cookie must not require HTTPS.
		CORS:                uiconfig.CORS{CookieInsecure: true},
		HideLogs:            true,
		DisableWriteActions: !writeActions,
	}
	if sec != nil {
		cfg.TLS = uiconfig.TLS{CaFile: sec.files.ClientCA, CertFile: sec.files.Cert, KeyFile: sec.files.Key,
			ServerName: sec.serverName, EnableHostVerification: true}
	}
	cfgProvider, err := uiconfig.NewConfigProviderWithRefresh(cfg)
	if err != nil {
		return nil, fmt.Errorf("web UI config: %w", err)
	}

	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Use(middleware.Recover())
	e.Use(middleware.Gzip())
	e.Use(cors.CORSMiddleware(cors.CORSConfig{
		AllowHeaders: []string{
			echo.HeaderOrigin, echo.HeaderContentType, echo.HeaderAccept,
			echo.HeaderXCSRFToken, echo.HeaderAuthorization, auth.AuthorizationExtrasHeader,
			"Caller-Type",
		},
		AllowCredentials: true,
		ConfigProvider:   cfgProvider,
	}))
	e.Use(middleware.Secure())
	e.Use(csrf.EnsureTokenCookie(false))
	e.Use(middleware.CSRFWithConfig(csrf.MiddlewareConfig(cfgProvider, false)))
	e.Pre(route.PublicPath(cfg.PublicPath))
	route.SetHealthRoute(e)
	forward := []api.Middleware{headers.WithForwardHeaders([]string{auth.AuthorizationExtrasHeader, "Caller-Type"})}
	if err := route.SetAPIRoutes(e, cfgProvider, forward); err != nil {
		return nil, fmt.Errorf("web UI API routes to %s: %w", frontendAddress, err)
	}
	route.SetAuthRoutes(e, cfgProvider)
	assets, err := ui.Assets()
	if err != nil {
		return nil, fmt.Errorf("web UI assets: %w", err)
	}
	if assets, err = fs.Sub(assets, "local"); err != nil {
		return nil, fmt.Errorf("web UI assets: %w", err)
	}
	if err := route.SetUIRoutes(e, cfg.PublicPath, assets); err != nil {
		return nil, fmt.Errorf("web UI routes: %w", err)
	}
	route.SetRenderRoute(e, cfg.PublicPath)

	w := &webUI{
		http: &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(w.done)
		if err := w.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("web UI stopped", "address", ln.Addr().String(), "error", err)
		}
	}()
	return w, nil
}

// stop closes the listener, gives requests in flight a moment, then cuts the rest (long polls of open pages).
func (w *webUI) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := w.http.Shutdown(ctx); err != nil {
		if err := w.http.Close(); err != nil {
			return fmt.Errorf("stop web UI: %w", err)
		}
	}
	<-w.done
	return nil
}
